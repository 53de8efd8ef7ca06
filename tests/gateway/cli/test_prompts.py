"""`eirc-gateway prompts report`: every voice prompt's seconds and the happy path's total (§3)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from ivr.timing import espeak_available

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


def report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    result = CliRunner().invoke(
        app,
        ["prompts", "report", "--cache", str(tmp_path / "cache.json"), *args],
        env={"COLUMNS": "200"},
    )
    return result.exit_code, result.output


def test_report_lists_every_prompt_and_the_happy_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = report(tmp_path, monkeypatch, "--language", "ru")
    assert code == 0, output
    for key in ("voice.main_menu", "voice.code_options", "voice.secret_repeat"):
        assert re.search(rf"{re.escape(key)}\s+│\s+\d+\.\d", output), key
    total = re.search(r"ru: happy path (\d+\.\d) s", output)
    assert total and 30 < float(total.group(1)) <= 65, output
    greeting = re.search(r"^│ greeting\s+│\s+(\d+\.\d)", output, re.M)
    assert greeting and float(greeting.group(1)) <= 10
    # Cached: a second run synthesises nothing new and says the same.
    cached = json.loads((tmp_path / "cache.json").read_text())
    assert len(cached) > 40
    again = report(tmp_path, monkeypatch, "--language", "ru")
    assert again == (code, output)
