"""The dashboard command: start Streamlit on the app page and stop it cleanly."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .common import app, fail


@app.command("app")
def serve_app(
    checkpoint: Optional[Path] = typer.Option(None, help="Model file (.safetensors or .onnx); the bundled default model when omitted."),
    port: int = typer.Option(8501, min=1, max=65535, help="Port of the dashboard."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 127.0.0.1 keeps the dashboard private to this machine, 0.0.0.0 shares it on the network."),
    models_dir: Optional[Path] = typer.Option(
        None, "--models-dir", help="Folder of model files (.safetensors, .onnx) the page may list and load by name; without it, no typed model paths are accepted."
    ),
    max_upload_mb: int = typer.Option(50, "--max-upload-mb", min=1, max=10_000, help="Largest file a browser may upload, in MB (Streamlit's server.maxUploadSize)."),
) -> None:
    """Start the dashboard (Streamlit) in this terminal; open the printed URL in a browser. Ctrl+C stops it."""
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        fail("the dashboard needs Streamlit: pip install 'desertseg[app]'")
    env = _page_env(checkpoint, models_dir)
    cmd = _streamlit_command(host, port, max_upload_mb)
    typer.echo(f"Dashboard at http://{host}:{port} (Ctrl+C stops it)", err=True)
    if os.name == "posix":
        # Become the server: a SIGTERM or SIGINT sent to this process (by a terminal, systemd,
        # docker stop, a test) then reaches Streamlit itself, which stops and frees the port;
        # no process of ours is left behind to be orphaned.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, cmd, env)
    code = _supervise(cmd, env)
    if code not in (0, -2, 130):
        raise typer.Exit(code)


# Streamlit's settings for a served dashboard: no browser opened, no telemetry, no file
# watcher or developer menu.
STREAMLIT_FLAGS = {
    "server.headless": "true",
    "browser.gatherUsageStats": "false",
    "server.fileWatcherType": "none",
    "global.developmentMode": "false",
    "client.toolbarMode": "minimal",
}


def _page_env(checkpoint: Optional[Path], models_dir: Optional[Path]) -> dict:
    """The environment the page reads its model settings from; unset means "not given" (typed paths off)."""
    env = dict(os.environ)
    env.pop("DESERTSEG_APP_CHECKPOINT", None)
    env.pop("DESERTSEG_APP_MODELS_DIR", None)
    if checkpoint is not None:
        if not checkpoint.is_file():
            fail(f"{checkpoint}: model file not found")
        env["DESERTSEG_APP_CHECKPOINT"] = str(checkpoint.resolve())
    if models_dir is not None:
        if not models_dir.is_dir():
            fail(f"{models_dir}: models folder not found (--models-dir needs an existing folder)")
        env["DESERTSEG_APP_MODELS_DIR"] = str(models_dir.resolve())
    return env


def _streamlit_command(host: str, port: int, max_upload_mb: int) -> list[str]:
    page = Path(__file__).parents[1] / "app" / "page.py"
    flags = {**STREAMLIT_FLAGS, "server.address": host, "server.port": port, "server.maxUploadSize": max_upload_mb}
    return [sys.executable, "-m", "streamlit", "run", str(page), *(arg for k, v in flags.items() for arg in (f"--{k}", str(v)))]


def _supervise(cmd: list[str], env: dict | None, grace_s: float = 5.0) -> int:
    """Run ``cmd`` until it exits; when we are told to stop (SIGTERM, SIGINT/Ctrl+C, Ctrl+Break),
    stop it too: terminate it, wait ``grace_s`` seconds, then kill it. Returns its exit code,
    or 130 when it was stopped on request.

    For Windows, where a process cannot be replaced by another (``os.execve`` there starts a
    new process and exits): a plain ``subprocess.call`` would leave the server running.
    """
    import signal
    import subprocess
    import time

    def stop(signum, frame):
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)
    proc = subprocess.Popen(cmd, env=env)
    stopped = False
    try:
        while proc.poll() is None:
            time.sleep(0.2)  # not proc.wait(): on Windows a blocking wait does not see Ctrl+C
    except KeyboardInterrupt:
        stopped = True
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return 130 if stopped else proc.returncode
