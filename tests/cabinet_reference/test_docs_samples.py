"""docs/cabinet-api.md's PHP sample reproduces the §11 worked example and accepts what it should.

The PHP runs when a `php` binary is present (Debian's php-cli); the 1C sample cannot run here and
is checked only for carrying the worked example's values.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "cabinet-api.md"
GET_SIGNATURE = "v1=04ba4d2a07cc2fe7397979a8ef3a3320c8eb575155b4ebc42e6a78b46e6e4508"
PUT_SIGNATURE = "v1=57cf08d4f6d218740b2ccb93bdd06bc33ef667209d8d561b4a51c4f786794abb"
PHP = shutil.which("php")


def blocks(language: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def run_php(source: str, tmp_path: Path) -> str:
    assert PHP is not None
    script = tmp_path / "sample.php"
    script.write_text(source, encoding="utf-8")
    result = subprocess.run([PHP, str(script)], capture_output=True, text=True, check=True)
    return result.stdout


def test_the_doc_has_the_php_and_1c_samples() -> None:
    assert len(blocks("php")) == 2
    (bsl,) = blocks("bsl")
    assert "ХешированиеДанных(ХешФункция.SHA256)" in bsl
    assert GET_SIGNATURE in bsl and PUT_SIGNATURE in bsl


@pytest.mark.skipif(PHP is None, reason="php-cli is not installed")
def test_the_php_sample_prints_the_worked_example(tmp_path: Path) -> None:
    functions, example = blocks("php")
    output = run_php(functions + example, tmp_path)
    assert output.split() == [GET_SIGNATURE, PUT_SIGNATURE]


@pytest.mark.skipif(PHP is None, reason="php-cli is not installed")
@pytest.mark.parametrize(
    ("signature", "now", "target", "accepted"),
    [
        (GET_SIGNATURE, 1767225600, "/recovery/v1/accounts/1000234528", True),
        ("v1=" + GET_SIGNATURE[3:].upper(), 1767225900, "/recovery/v1/accounts/1000234528", True),
        (GET_SIGNATURE, 1767225901, "/recovery/v1/accounts/1000234528", False),
        (GET_SIGNATURE, 1767225600, "/recovery/v1/accounts/1000234517", False),
        (GET_SIGNATURE, 1767225600, "/recovery/v1/accounts/1000234528?x=1", False),
        (GET_SIGNATURE[3:], 1767225600, "/recovery/v1/accounts/1000234528", False),
    ],
)
def test_the_php_check_accepts_and_refuses_as_the_contract_says(
    tmp_path: Path, signature: str, now: int, target: str, accepted: bool
) -> None:
    functions, _ = blocks("php")
    request = (
        "$_SERVER['HTTP_X_EIRC_TIMESTAMP'] = '1767225600';\n"
        f"$_SERVER['HTTP_X_EIRC_SIGNATURE'] = '{signature}';\n"
        "$_SERVER['REQUEST_METHOD'] = 'GET';\n"
        f"$_SERVER['REQUEST_URI'] = '{target}';\n"
        "$secret = '0123456789abcdef0123456789abcdef';\n"
        f"echo eirc_request_is_signed($secret, '', {now}) ? 'yes' : 'no';\n"
    )
    assert run_php(functions + request, tmp_path).strip() == ("yes" if accepted else "no")
