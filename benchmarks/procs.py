"""Processes of a benchmark run: CPU time read from the kernel, pinning to cores, servers.

CPU is `/proc/<pid>/stat` utime + stime of a process tree (every thread included), plus the
cutime + cstime its members collected from children that already exited, in seconds. Those
come in clock ticks (10 ms): over a step's 200 requests, ±0.05 ms a request, about 0.15 × the
floor. So a measurement also sums the scheduler's own count, in nanoseconds, of every live
thread (`/proc/<pid>/task/<tid>/schedstat`), and uses it when no thread or process came or
went in between (one that exited takes its count with it); otherwise the ticks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stat_fields(pid: int, proc: Path = PROC) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    return (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def process_tree(root: int, proc: Path = PROC) -> list[int]:
    """The pid and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(stat_fields(int(entry.name), proc)[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_ticks(pids: list[int], proc: Path = PROC) -> int:
    """utime + stime (+ cutime + cstime of reaped children) of the processes, in clock ticks."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat_fields(pid, proc)
            # stat(5): utime, stime, cutime, cstime are fields 14-17; fields[0] is field 3.
            total += sum(int(value) for value in fields[11:15])
    return total


def task_nanoseconds(pids: list[int], proc: Path = PROC) -> tuple[frozenset[str], int]:
    """Every live thread of the processes (as pid/tid), and the CPU time they have run, in ns
    (the first field of schedstat)."""
    tasks: set[str] = set()
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in (proc / str(pid) / "task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    total += int((task / "schedstat").read_text().split()[0])
                    tasks.add(f"{pid}/{task.name}")
    return frozenset(tasks), total


@dataclass(frozen=True)
class CpuSample:
    """One reading of a process tree's CPU: in ticks, and per live thread in nanoseconds."""

    ticks_s: float
    tasks: frozenset[str]
    task_ns: int

    def since(self, earlier: CpuSample) -> float:
        """Seconds of CPU between two readings: the nanosecond count when the same threads were
        there at both (and counted at all), the ticks otherwise."""
        if self.tasks and self.tasks == earlier.tasks and self.task_ns >= earlier.task_ns:
            return (self.task_ns - earlier.task_ns) / 1e9
        return self.ticks_s - earlier.ticks_s


@dataclass
class CpuMeter:
    """Server CPU of one process tree, re-read at each sample (workers and backends come and go)."""

    root: int
    proc: Path = PROC

    def seconds(self) -> float:
        return cpu_ticks(process_tree(self.root, self.proc), self.proc) / CLK_TCK

    def sample(self) -> CpuSample:
        pids = process_tree(self.root, self.proc)
        tasks, task_ns = task_nanoseconds(pids, self.proc)
        return CpuSample(cpu_ticks(pids, self.proc) / CLK_TCK, tasks, task_ns)


def runqueue_wait_seconds(pid: int, proc: Path = PROC) -> float:
    """Time the process's main thread (the event loop) was runnable but waited for a CPU:
    the second field of /proc/<pid>/schedstat. Other processes on its core cause it."""
    try:
        return int((proc / str(pid) / "schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def pin(pid: int, cores: set[int]) -> None:
    """Pin a process and its threads to `cores` (no-op where the machine has fewer)."""
    if not usable_pinning():
        return
    for task in (PROC / str(pid) / "task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cores)


def usable_pinning() -> bool:
    """Two cores or more: the server gets core 0, the load generator core 1."""
    return len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0)


SERVER_CORE = {0}
CLIENT_CORE = {1}


@dataclass
class Server:
    """A uvicorn process started by the benchmark."""

    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)  # a backlog of a benchmark is not worth a graceful exit
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


def uvicorn_argv(app: str, port: int, log_level: str) -> list[str]:
    """The gateway's uvicorn settings (`eirc-gateway serve`: one worker, no proxy headers),
    the same for the gateway and the floor."""
    argv = [sys.executable, "-m", "uvicorn", app, "--factory", "--workers", "1"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers"]
    argv += ["--log-level", log_level, "--backlog", "4096"]
    if log_level != "info":
        argv.append("--no-access-log")
    return argv


def start_server(
    name: str, app: str, port: int, env: dict[str, str], workdir: Path, log_level: str
) -> Server:
    """uvicorn on loopback, pinned to the server core."""
    argv = uvicorn_argv(app, port, log_level)
    if usable_pinning():
        argv = ["taskset", "-c", ",".join(map(str, sorted(SERVER_CORE))), *argv]
    log = (workdir / f"{name}.log").open("ab")
    process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
        argv,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return Server(name, process, log, port)


def wait_port(server: Server, timeout: float = 60.0) -> None:
    """Until the server answers GET /readyz with 200."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            sys.exit(f"{server.name} exited with {server.process.returncode} before it was ready")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock,
        ):
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if sock.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    sys.exit(f"{server.name} was not ready within {timeout:.0f} s")


def find_postmaster(port: int) -> int | None:
    """The PostgreSQL server listening on `port` (its postmaster), from /proc cmdlines."""
    wanted = ["-p", str(port)]
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and argv[0].endswith("/postgres"):
            for i in range(len(argv) - 1):
                if argv[i : i + 2] == wanted:
                    return int(entry.name)
    return None
