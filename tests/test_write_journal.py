"""MLflow writes queued during an outage survive the driver: ``BufferedClient`` with a journal,
killed (dropped without draining) while the server is unreachable, is replaced by a new client on
the same journal that sends every queued write once, in order, into a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from jepa_sweeps.retry import BufferedClient

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
