"""The deployment files, checked by the programs that read them (scripts/check-deploy).

Debian's nginx runs `nginx -t` on deploy/nginx.conf and `systemd-analyze verify` the units; a
broken copy of either must fail the script. Nothing here touches a database: these run once, in
the SQLite pass (tests/conftest.py deselects them from the PostgreSQL one).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from core.platform.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check-deploy"


def check(deploy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), str(deploy)], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", copy)
    return copy


def test_the_shipped_deploy_files_pass() -> None:
    result = check(ROOT / "deploy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deploy files: ok" in result.stdout


def test_an_nginx_site_that_nginx_refuses_fails(deploy_copy: Path) -> None:
    # The directive that broke Debian 12's nginx 1.22 (it came with 1.25.1).
    site = deploy_copy / "nginx.conf"
    site.write_text(
        site.read_text().replace("listen 443 ssl http2;", "listen 443 ssl;\n    http2 on;")
    )
    result = check(deploy_copy)
    assert result.returncode == 1
    assert 'unknown directive "http2"' in result.stderr


def test_a_unit_with_a_bad_setting_fails(deploy_copy: Path) -> None:
    # systemd-analyze only warns about this (exit 0): the script fails on any warning.
    unit = deploy_copy / "systemd" / "eirc-gateway@.service"
    unit.write_text(unit.read_text().replace("Type=exec", "Type=exce"))
    result = check(deploy_copy)
    assert result.returncode == 1
    assert "Failed to parse service type" in result.stderr


def test_a_unit_whose_program_is_not_a_path_fails(deploy_copy: Path) -> None:
    unit = deploy_copy / "systemd" / "eirc-gateway-audit.service"
    unit.write_text(
        unit.read_text().replace("ExecStart=/opt/eirc-gateway/.venv/bin/", "ExecStart=")
    )
    result = check(deploy_copy)
    assert result.returncode == 1
    assert "is not executable" in result.stderr


def test_the_env_example_has_working_mail_settings() -> None:
    values = {}
    for line in (ROOT / "deploy" / "gateway.env.example").read_text().splitlines():
        key, equals, value = line.partition("=")
        if equals and key.startswith("GATEWAY_") and not line.startswith("#"):
            values[key.removeprefix("GATEWAY_").lower()] = value
    settings = Settings(_env_file=None, smtp_url=values["smtp_url"], mail_from=values["mail_from"])
    assert settings.smtp_url is not None and settings.mail_from
