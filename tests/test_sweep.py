"""End-to-end sweeps against real components: a `ray start --head` node with token auth and
`ray job submit`, an `mlflow server` on 127.0.0.1 over HTTP, and a local Ray whose sweep driver is
killed and resumed. These are the slow tests (a 2-worker trial costs ~30 s of start-up here)."""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from jepa_sweeps import names
from tests.conftest import BIN, MlflowServer, clean_env, free_port, kill_matching

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "search_spaces" / "smoke.yaml")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """A real head node with token authentication on; yields (dashboard address, client env)."""
    temp = f"/tmp/rh{os.getpid()}"
    token = secrets.token_hex(16)
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, JEPA_SWEEPS_HOME=str(tmp_path_factory.mktemp("home")))
    gcs, dashboard = free_port(), free_port()
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        env=env, check=True, capture_output=True, cwd=tmp_path_factory.mktemp("head"), timeout=180,
    )
    yield f"http://127.0.0.1:{dashboard}", env
    kill_matching(temp)


def test_ray_job_submit_against_mlflow_server(ray_head, mlflow_server: MlflowServer, tmp_path: Path) -> None:
    address, env = ray_head
    mlflow_server.wait_healthy()
    uri = mlflow_server.uri
    storage = tmp_path / "storage"
    submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", "smoke-test", "--",
              "python", "-m", "jepa_sweeps.run", SMOKE,
              "--set", f"mlflow.tracking_uri={uri}", "--set", f"storage={storage}"]
    unauthorised = subprocess.run(submit, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert unauthorised.returncode != 0, "token authentication must be on"
    done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, "smoke-test"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert "succeeded" in (status.stdout + status.stderr).lower(), done.stdout[-3000:] + done.stderr[-3000:]
    assert "runs table:  " + uri in done.stdout

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(names.ROLE_TAG) == names.SWEEP_ROLE]
    children = [r for r in runs if names.PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags[names.PARENT_TAG] for c in children} == {parents[0].info.run_id}
    assert parents[0].info.status == "FINISHED"
    assert names.SPEC_ARTIFACT in [a.path for a in client.list_artifacts(parents[0].info.run_id)]
    best = parents[0].data.tags[names.BEST_RUN_TAG]
    for child in children:
        params = child.data.params
        assert params["regulariser"] == "sigreg" and params["world_size"] == "2"
        assert {"lambda", "n_global_views", "n_local_views", "batch_size", "seed"} <= set(params)
        assert child.data.tags[names.STATUS_TAG] == names.FINISHED and child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "knn_acc")
        assert [m.step for m in history] == [1, 2]
        assert child.data.metrics["world_size"] == 2
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert names.CONFIG_ARTIFACT in artifacts
        if child.info.run_id == best:
            assert [a.path for a in client.list_artifacts(best, names.BEST_ENCODER)] == [f"{names.BEST_ENCODER}/encoder.pt"]
    assert any(c.info.run_name == "sigreg-lam0.05-g2l2-b64-s0" for c in children)


def _child_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if names.PARENT_TAG in r.data.tags]


def _progress(database: Path) -> tuple[int, int]:
    """(finished child runs, running child runs with an evaluation), read-only.

    Polls the SQLite file directly: an ``MlflowClient`` here would run schema migrations and
    race the runner that is creating the same database.
    """
    if not database.exists():
        return 0, 0
    query = f"""
        SELECT r.status, EXISTS (SELECT 1 FROM metrics m WHERE m.run_uuid = r.run_uuid AND m.key = 'knn_acc')
        FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = '{names.PARENT_TAG}'
    """
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(query).fetchall()
    except sqlite3.Error:  # tables not created yet
        return 0, 0
    return sum(s == "FINISHED" for s, _ in rows), sum(s == "RUNNING" and bool(m) for s, m in rows)


def test_killed_sweep_driver_resumes_without_duplicates(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ray_tmp = f"/tmp/rk{os.getpid()}"
    env = clean_env(JEPA_SWEEPS_HOME=str(home), RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    command = [sys.executable, "-m", "jepa_sweeps.run", SMOKE, "--set", "num_samples=3", "--set", "epochs=3"]
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # kill once one trial finished and the next one is training
            finished, training = _progress(home / "mlflow.db")
            if finished and training:
                break
            assert first.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(2)
        else:
            pytest.fail("the sweep never reached its second trial")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        kill_matching(ray_tmp)

    second = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    kill_matching(ray_tmp)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout
    runs = _child_runs(uri)
    trial_ids = [r.data.tags[names.TRIAL_TAG] for r in runs]
    assert len(runs) == 3 and len(set(trial_ids)) == 3, trial_ids
    assert all(r.info.status == "FINISHED" and r.data.tags[names.STATUS_TAG] == names.FINISHED for r in runs)
    for run in runs:
        history = MlflowClient(uri).get_metric_history(run.info.run_id, "knn_acc")
        assert max(m.step for m in history) == 3
    parents = {r.data.tags[names.PARENT_TAG] for r in runs}
    assert len(parents) == 1
