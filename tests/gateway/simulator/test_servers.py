"""The servers the tests and the benchmark start (gateway/simulator/servers.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from gateway.simulator.servers import ServerFailed, ServerProcess, free_port


def test_a_server_that_exits_fails_with_the_tail_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(
        "broken", [sys.executable, "-c", "print('no config here'); raise SystemExit(3)"], log
    )
    with pytest.raises(ServerFailed, match=r"(?s)broken: exited with code 3.*no config here"):
        server.wait_until_ready(lambda: False, timeout=30)


def test_a_server_that_never_answers_is_stopped(tmp_path: Path) -> None:
    sleeper = shutil.which("sleep")
    assert sleeper is not None
    server = ServerProcess("silent", [sleeper, "60"], tmp_path / "server.log")
    with pytest.raises(ServerFailed, match="silent: not ready after"):
        server.wait_until_ready(lambda: False, timeout=0.5)
    assert server.process.poll() is not None


def test_free_port_is_a_loopback_port() -> None:
    assert 0 < free_port() < 65536
