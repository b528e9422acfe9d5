"""`desertseg app` stops when told to: on SIGTERM (systemd, docker stop, a supervisor) and on
SIGINT (Ctrl+C), sent to its process alone, the dashboard and every process it started exit
within seconds and the port can be bound again. Linux only: processes are found in /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_app_e2e import _desertseg, _free_port, wait_healthy

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes in /proc (Linux)")
START_S = 120  # Streamlit's start-up on a busy machine
STOP_S = 10


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, session id)`` of a live process, None when it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid, _pgrp, session = text[text.rindex(")") + 2 :].split()[:4]  # the name may hold spaces
    return None if state in "ZX" else (state, int(ppid), int(session))


def _processes() -> dict[int, tuple[str, int, int]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = st
    return found


def _descendants(pid: int) -> set[int]:
    procs, found, todo = _processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        for child, (_, ppid, _) in procs.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kill_session(proc: subprocess.Popen) -> None:
    """Clean up after a failed test: kill the process and whatever of its group outlived it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=15)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_app_stops_on_signal_and_frees_the_port(sig, tiny_run, tmp_path):
    port = _free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        # Its own session, so that anything it starts can be found (and cleaned up) afterwards.
        proc = subprocess.Popen([*_desertseg(), "app", "--checkpoint", str(tiny_run / "best.safetensors"), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(proc, f"http://127.0.0.1:{port}", log_path, START_S)
            children = _descendants(proc.pid)
            t0 = time.perf_counter()
            proc.send_signal(sig)  # to the process alone, not its group: it must pass the stop on
            try:
                proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"desertseg app still running {STOP_S} s after {sig.name}:\n{log_path.read_text()[-3000:]}")
            stop_s = time.perf_counter() - t0
            print(f"\n{sig.name}: exited with {proc.returncode} after {stop_s:.2f} s; {len(children)} child processes before")
            left = {pid for pid in children if _stat(pid) is not None}
            left |= {pid for pid, (_, _, session) in _processes().items() if session == proc.pid}
            assert not left, f"processes left after {sig.name}: {sorted(left)}"
            assert proc.returncode in (0, 130), log_path.read_text()[-3000:]  # a clean stop, not killed by the signal
            # Nothing listens any more: a new server could start here. (SO_REUSEADDR, as every
            # server sets it, lets the bind ignore the health checks' closed TIME_WAIT connections
            # but still fails while a socket listens on the port.)
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                s.listen()
        finally:
            _kill_session(proc)


# A child that would sleep for ten minutes; the stubborn one ignores SIGTERM and must be killed.
OBEDIENT = "import time; time.sleep(600)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


@pytest.mark.parametrize("child", [OBEDIENT, STUBBORN], ids=["obedient", "stubborn"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_supervisor_stops_its_child(sig, child):
    """The Windows path of `desertseg app` (a supervising process instead of exec), run here:
    a signal to the supervisor stops its child too, killing it after the grace period."""
    code = f"import sys; from desertseg.cli.serve import _supervise; sys.exit(_supervise([sys.executable, '-c', {child!r}], None, grace_s=1))"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.perf_counter() + 60
        while not (children := _descendants(proc.pid)):
            assert time.perf_counter() < deadline and proc.poll() is None, "the supervised child never started"
            time.sleep(0.1)
        time.sleep(0.5)  # let the stubborn child install its handler
        proc.send_signal(sig)
        assert proc.wait(timeout=STOP_S) == 130
        assert not {pid for pid in children if _stat(pid) is not None}
    finally:
        _kill_session(proc)
