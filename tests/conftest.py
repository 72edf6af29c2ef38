"""Fixtures and helpers the test files share: free ports, a clean environment for subprocesses, an
``mlflow server`` on 127.0.0.1, a local Ray started as the runner starts it, an S3 bucket (moto)
and a sandboxed ``JEPA_SWEEPS_HOME``.

Markers (registered in pyproject.toml): ``slow`` for anything over ~10 s, ``ray`` for anything
starting Ray, ``cluster`` for the multi-node rehearsals. ``python -m pytest -m "not slow"`` is the
fast loop; plain ``python -m pytest`` runs everything.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Ray's or MLflow's settings, with this interpreter's ``bin`` first on
    the PATH (so that ``python``, ``ray`` and ``mlflow`` of subprocesses and jobs are this venv's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def kill_matching(marker: str) -> None:
    """Kill every process whose command line mentions ``marker`` (a temp folder unique to one test's Ray)."""
    import ray  # noqa: F401 - puts the psutil that Ray ships on the path
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and marker in " ".join(proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def load_rehearsal() -> Any:
    """``cluster/rehearsal.py``, a script beside the deployment files (not a module of the package)."""
    if "rehearsal" not in sys.modules:
        spec = importlib.util.spec_from_file_location("rehearsal", ROOT / "cluster" / "rehearsal.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["rehearsal"] = module  # before running it: its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["rehearsal"]


class MlflowServer:
    """An ``mlflow server`` on 127.0.0.1 (SQLite backend) that a test can stop and restart on the
    same port and store."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),  # one process less to start
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            assert self.proc is not None and self.proc.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """Started, not yet waited for: it boots (~30 s here) while a test starts Ray; ``wait_healthy`` before use."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray for the module, started as the runner starts it (``main`` then reuses it), with
    token authentication on as users have it. (Ray cannot switch authentication modes within one
    process: after a token-auth Ray, a ``RAY_AUTH_MODE=disabled`` one starts every trial actor dead.)"""
    import ray

    from jepa_sweeps.run import init_ray
    from jepa_sweeps.storage import Locations

    folder = tmp_path_factory.mktemp("ray_home")
    init_ray(Locations(str(folder), f"sqlite:///{folder / 'unused.db'}", "unused", "unused"))
    yield
    ray.shutdown()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``JEPA_SWEEPS_HOME`` and working directory; no tracking URI from the environment."""
    monkeypatch.setenv("JEPA_SWEEPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh empty cwd and ``JEPA_SWEEPS_HOME``; afterwards both must still be untouched."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("JEPA_SWEEPS_HOME", str(home))
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(cwd)
    yield cwd
    assert not home.exists(), sorted(home.rglob("*"))
    assert not list(cwd.iterdir()), sorted(cwd.iterdir())
    import ray

    assert not ray.is_initialized()


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty bucket on moto's S3 server (in this process, 127.0.0.1, offline); yields ``s3://bucket``."""
    pytest.importorskip("moto.server", reason="needs moto[server]")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=HOST, port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint,
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="jepa-test")
    try:
        yield "s3://jepa-test"
    finally:
        server.stop()
