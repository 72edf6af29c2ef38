"""MLflow writes queued during an outage survive the driver: ``BufferedClient`` with a journal,
killed (dropped without draining) while the server is unreachable, is replaced by a new client on
the same journal that sends every queued write once, in order, into a real SQLite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from jepa_sweeps.accounting import COST_KEYS
from jepa_sweeps.retry import BufferedClient
from tests.conftest import MlflowServer
from tests.test_safety import _clean_up_ray

DOWN = "http://127.0.0.1:9"  # nothing listens: every write fails as in an outage


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_queued_writes_outlive_the_driver_and_are_replayed_once(tmp_path: Path) -> None:
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    journal = tmp_path / "sweep" / "mlflow_queue.jsonl"
    artifact = tmp_path / "config.json"
    artifact.write_text("{}")

    down = BufferedClient(MlflowClient(DOWN), journal=journal)
    run = down.create_run(experiment, run_name="trial", tags={"jepa.trial_id": "t1"})
    placeholder = run.info.run_id
    assert placeholder.startswith("pending-")
    down.log_batch(placeholder, params=[Param("lambda", "0.05")])
    down.log_artifact(placeholder, str(artifact))
    artifact.unlink()  # the caller's temporary file is gone; the queue kept a copy
    for step in (1, 2):
        down.log_batch(placeholder, metrics=[Metric("knn_acc", 0.1 * step, 1000 + step, step)])
    down.set_tag(placeholder, "jepa.status", "finished")
    assert len(down.pending) == 6 and journal.is_file()
    del down  # the driver is killed: nothing drained

    up = BufferedClient(store, journal=journal)
    assert up.flush()
    (found,) = store.search_runs([experiment])
    run_id = found.info.run_id
    assert found.data.tags["jepa.trial_id"] == "t1" and found.data.tags["jepa.status"] == "finished"
    assert found.data.params == {"lambda": "0.05"}
    assert [f.path for f in store.list_artifacts(run_id)] == ["config.json"]
    assert history(store, run_id, "knn_acc") == [(1, 0.1), (2, 0.2)]
    assert not journal.exists() and not journal.with_name(journal.name + ".files").exists()
    del up
    assert BufferedClient(store, journal=journal).flush()  # nothing left to replay
    assert history(store, run_id, "knn_acc") == [(1, 0.1), (2, 0.2)]


def test_a_write_that_reached_the_server_before_the_kill_is_not_duplicated(tmp_path: Path) -> None:
    """The head of the queue may have been sent and the driver killed before its answer arrived."""
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = store.create_run(store.create_experiment("e")).info.run_id
    journal = tmp_path / "queue.jsonl"
    batch = [Metric("knn_acc", 0.5, 1234, 3), Metric("loss", 1.5, 1234, 3)]
    down = BufferedClient(MlflowClient(DOWN), journal=journal)
    down.log_batch(run_id, metrics=batch)
    down.log_batch(run_id, metrics=[Metric("knn_acc", 0.6, 1300, 4)])
    down.log_batch(run_id, tags=[RunTag("jepa.status", "finished")])
    store.log_batch(run_id, metrics=batch)  # what reached the server before the kill
    del down

    assert BufferedClient(store, journal=journal).flush()
    assert history(store, run_id, "knn_acc") == [(3, 0.5), (4, 0.6)]
    assert history(store, run_id, "loss") == [(3, 1.5)]
    assert store.get_run(run_id).data.tags["jepa.status"] == "finished"


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = store.create_run(store.create_experiment("e")).info.run_id
    journal = tmp_path / "queue.jsonl"
    down = BufferedClient(MlflowClient(DOWN), journal=journal)
    down.log_batch(run_id, metrics=[Metric("knn_acc", 0.5, 1, 1)])
    del down
    with journal.open("a") as f:
        f.write('{"queued": "x", "name": "log_ba')  # killed mid-write
    assert BufferedClient(store, journal=journal).flush()
    assert history(store, run_id, "knn_acc") == [(1, 0.5)]


# --- the whole sweep: driver SIGKILLed during an outage, resumed after it -------------------------

# wall-clock measurements differ between any two runs: throughput, the loop clock the trial host
# reports (trial.RayHooks), and what each trial cost (accounting)
TIMING = {"images_per_s", "loop_s", *COST_KEYS}


def _records(client: MlflowClient, experiment: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the experiment's one child run: key → [(step, value)] as logged, sorted."""
    exp = client.get_experiment_by_name(experiment)
    (child,) = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, key))
            for key in child.data.metrics}


@pytest.mark.slow
def test_killed_driver_during_an_outage_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    home, ray_tmp = tmp_path / "home", f"/tmp/rj{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(JEPA_SWEEPS_HOME=str(home), RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled")

    def spec(name: str) -> list[str]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "name": name, "num_samples": 1, "scheduler": {"name": "fifo"},
            "trial": {"epochs": 2, "optim": {"batch_size": 64}, "views": {"n_global": 2, "n_local": 0},
                      "eval": {"final_probe_epochs": 0}},
            "resources": {"workers": 1, "cpus_per_worker": 1}, "mlflow": {"tracking_uri": server.uri},
        }))
        return [sys.executable, "-m", "jepa_sweeps.run", str(path)]

    try:
        server.wait_healthy()
        reference = subprocess.run(spec("reference"), env=env, cwd=tmp_path, capture_output=True, text=True,
                                   timeout=900)
        assert reference.returncode == 0, reference.stderr[-3000:]
        _clean_up_ray(ray_tmp)

        journal = home / "ray_results" / "outage" / "mlflow_queue.jsonl"
        first = subprocess.Popen(spec("outage"), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            client = MlflowClient(server.uri)
            deadline = time.monotonic() + 600
            while not _child_started(client, "outage"):  # the trial's run exists: cut the server now
                assert first.poll() is None and time.monotonic() < deadline, "the trial never started"
                time.sleep(0.5)
            server.stop()
            while '"set_terminated"' not in (journal.read_text() if journal.exists() else ""):
                assert first.poll() is None and time.monotonic() < deadline, "the trial never ended"
                time.sleep(1)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
            _clean_up_ray(ray_tmp)
        assert '"log_batch"' in journal.read_text()

        server.start()
        server.wait_healthy()
        resumed = subprocess.run(spec("outage"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming" in resumed.stdout
        assert not journal.exists()

        client = MlflowClient(server.uri)
        expected, got = _records(client, "reference"), _records(client, "outage")
        assert set(got) == set(expected)
        for key, points in expected.items():
            assert [s for s, _ in got[key]] == [s for s, _ in points], key  # every step once
            if key not in TIMING:
                assert [v for _, v in got[key]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-9), key
    finally:
        _clean_up_ray(ray_tmp)
        server.stop()


def _child_started(client: MlflowClient, experiment: str) -> bool:
    try:
        exp = client.get_experiment_by_name(experiment)
        return exp is not None and any("mlflow.parentRunId" in r.data.tags for r in client.search_runs([exp.experiment_id]))
    except Exception:  # noqa: BLE001 - the store may be busy being created
        return False
