"""MLflow writes that survive a tracking-server outage.

A sweep runs for hours; the tracking server may restart meanwhile. The sweep driver's writes go
through ``BufferedClient``: a write that fails for a reason that can pass (no connection, timeout,
5xx, 429) is queued, later writes queue behind it so that their order is kept, and the queue is
retried on later calls after a bounded exponential backoff and drained at the end of the sweep.
Nothing raises: a logging outage must not kill a sweep. The SQL store drops a metric it already
holds, so a write that reached the server before its answer was lost is not duplicated.

With a ``journal`` (a file beside the sweep state) the queue also survives the driver: every
queued call is appended to it, and so is every acknowledgement; a new client on the same file
(the resumed sweep) replays what was never acknowledged, in order. Only the call at the head of
the queue can have reached the server unacknowledged (the driver killed mid-request): on replay
its metrics already in the run's history are left out, so replaying loses and duplicates nothing.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import requests
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

from jepa_sweeps.redaction import redact

logger = logging.getLogger(__name__)

WRITES = frozenset(
    {"create_run", "log_batch", "log_metric", "log_param", "set_tag", "set_terminated", "update_run",
     "log_artifact", "log_artifacts"}
)
#: One attempt per call: this client does the retrying, without blocking the Tune loop for minutes
#: as MLflow's own retries (7, up to ~4 min per request) would. Explicit user settings win.
ATTEMPT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def retryable(err: BaseException) -> bool:
    """An outage passes (no connection, timeout, 5xx, 429); a request the store refuses never will."""
    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
    elif isinstance(err, requests.HTTPError) and err.response is not None:
        status = err.response.status_code
    else:
        return isinstance(err, OSError)  # requests' connection errors and timeouts are OSErrors
    return status >= 500 or status == 429


@contextmanager
def _one_attempt() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ATTEMPT_ENV}
    os.environ.update({k: v for k, v in ATTEMPT_ENV.items() if saved[k] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


@dataclass
class _Call:
    name: str
    args: dict[str, Any]  # bound by parameter name, so run ids and paths can be rewritten
    placeholder: str | None = None  # create_run: the run id handed out before the run existed
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    replayed: bool = False  # read back from a journal: may have reached the server already


ENTITIES = {"Metric": (Metric, ("key", "value", "timestamp", "step")), "Param": (Param, ("key", "value")),
            "RunTag": (RunTag, ("key", "value"))}


def _encode(value: Any) -> Any:
    for name, (cls, fields) in ENTITIES.items():
        if isinstance(value, cls):
            return {"__entity__": name, **{f: getattr(value, f) for f in fields}}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__entity__" in value:
        cls, fields = ENTITIES[value["__entity__"]]
        return cls(*(value[f] for f in fields))
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


@dataclass
class BufferedClient:
    """``MlflowClient`` whose writes are queued in order and retried while the store is unreachable.

    Reads go straight to the client. ``create_run`` during an outage returns a run with a
    placeholder id; queued calls naming it get the real id once the run is created. Files of queued
    artifact uploads are copied aside first, since callers delete their temporary folders.
    """

    client: MlflowClient
    max_delay_s: float = 30.0
    pending: deque[_Call] = field(default_factory=deque)
    run_ids: dict[str, str] = field(default_factory=dict)  # placeholder → real run id
    delay_s: float = 0.0
    retry_at: float = 0.0
    spool: Path | None = None
    journal: Path | None = None  # append-only record of queued and acknowledged calls

    def __post_init__(self) -> None:
        if self.journal is not None:
            self.spool = self.journal.with_name(self.journal.name + ".files")
            self._replay()

    def _replay(self) -> None:
        """Queue what an earlier driver queued and never saw acknowledged (a torn last line, from a
        kill mid-write, is skipped: its call was never acknowledged either, so nothing else is)."""
        queued: dict[str, _Call] = {}
        try:
            lines = self.journal.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "queued" in entry:
                queued[entry["queued"]] = _Call(entry["name"], _decode(entry["args"]), entry.get("placeholder"),
                                                entry["queued"], replayed=True)
            elif "done" in entry:
                queued.pop(entry["done"], None)
                if entry.get("placeholder") and entry.get("run_id"):
                    self.run_ids[entry["placeholder"]] = entry["run_id"]
        calls = list(queued.values())
        for call in calls[1:]:  # only the head can have been sent unacknowledged
            call.replayed = False
        self.pending.extend(calls)
        if self.pending:
            logger.warning("%d MLflow write(s) queued by an earlier run of this sweep: sending them", len(self.pending))

    def _record(self, entry: dict[str, Any]) -> None:
        if self.journal is None:
            return
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with self.journal.open("a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __getattr__(self, name: str) -> Any:
        if name == "client":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        attr = getattr(self.client, name)
        return partial(self.submit, name) if name in WRITES else attr

    def submit(self, name: str, *args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(getattr(MlflowClient, name)).bind(self.client, *args, **kwargs)
        call = _Call(name, dict(list(bound.arguments.items())[1:]))
        if name == "create_run":
            call.placeholder = f"pending-{uuid.uuid4().hex}"
        if not self.flush():
            self._queue(call)
        else:
            try:
                return self._send(call)
            except Exception as err:  # noqa: BLE001 - nothing may reach Tune
                if self._failed(call, err):
                    self._queue(call)
        if call.placeholder is None:
            return None
        info = RunInfo(call.placeholder, call.args.get("experiment_id", ""), "", "RUNNING", int(time.time() * 1000),
                       None, "active", run_name=call.args.get("run_name"))
        return Run(info, RunData())

    def flush(self) -> bool:
        """Send queued calls, oldest first, once the backoff has passed; True if none are left."""
        while self.pending and time.monotonic() >= self.retry_at:
            call = self.pending[0]
            try:
                result = self._send(call)
            except Exception as err:  # noqa: BLE001
                if self._failed(call, err):
                    return False
                result = None
            self.pending.popleft()
            run_id = getattr(getattr(result, "info", None), "run_id", None)
            self._record({"done": call.id, "placeholder": call.placeholder, "run_id": run_id})
            if not self.pending:
                logger.warning("MLflow tracking reachable again: queued writes sent")
                self.delay_s = 0.0
                self._forget()
        return not self.pending

    def _forget(self) -> None:
        """Nothing is pending: the journal and the copied files have served."""
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)
        if self.spool is not None:
            shutil.rmtree(self.spool, ignore_errors=True)
            if self.journal is None:
                self.spool = None

    def drain(self, timeout_s: float = 300.0) -> None:
        """At the end of a sweep: retry until the queue is empty or ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        while not self.flush() and self.retry_at < deadline:
            time.sleep(max(0.0, self.retry_at - time.monotonic()))
        if self.pending and self.journal is not None:
            logger.warning("MLflow tracking still unreachable: %d queued write(s) kept in %s; resuming the "
                           "sweep sends them", len(self.pending), self.journal)
            return
        if self.pending:
            logger.warning("MLflow tracking still unreachable: %d queued write(s) lost", len(self.pending))
            self.pending.clear()
        self._forget()

    def _send(self, call: _Call) -> Any:
        args = dict(call.args)
        if "run_id" in args:
            args["run_id"] = self.run_ids.get(args["run_id"], args["run_id"])
            if args["run_id"].startswith("pending-"):
                raise MlflowException(f"{call.name}: its run was never created", error_code=RESOURCE_DOES_NOT_EXIST)
        if call.replayed and call.name == "log_batch" and args.get("metrics"):
            args["metrics"] = self._not_yet_logged(args["run_id"], args["metrics"])
            call.replayed = False
        with _one_attempt():
            result = getattr(self.client, call.name)(**args)
        if call.placeholder is not None:
            self.run_ids[call.placeholder] = result.info.run_id
        return result

    def _not_yet_logged(self, run_id: str, metrics: list[Metric]) -> list[Metric]:
        """``metrics`` without those the run already holds (same key, step, timestamp and value)."""
        with _one_attempt():
            held = {(m.key, m.step, m.timestamp, m.value)
                    for key in {m.key for m in metrics} for m in self.client.get_metric_history(run_id, key)}
        return [m for m in metrics if (m.key, m.step, m.timestamp, m.value) not in held]

    def _failed(self, call: _Call, err: Exception) -> bool:
        """Back off and return True if ``call`` should be retried; otherwise drop it with a warning."""
        message = redact(str(err).splitlines()[0] if str(err) else type(err).__name__)[:300]
        if not retryable(err):
            logger.warning("MLflow refused %s (dropped): %s", call.name, message)
            return False
        if self.delay_s == 0.0:
            logger.warning("MLflow tracking unreachable (%s); queueing writes and retrying", message)
        self.delay_s = min(max(2 * self.delay_s, 1.0), self.max_delay_s)
        self.retry_at = time.monotonic() + self.delay_s
        return True

    def _queue(self, call: _Call) -> None:
        for key in ("local_path", "local_dir"):
            if key in call.args:
                self.spool = self.spool or Path(tempfile.mkdtemp(prefix="jepa-mlflow-"))
                self.spool.mkdir(parents=True, exist_ok=True)
                source = Path(call.args[key])
                target = self.spool / uuid.uuid4().hex / source.name
                if source.is_dir():
                    shutil.copytree(source, target)
                else:
                    target.parent.mkdir(parents=True)
                    shutil.copy2(source, target)
                call.args[key] = str(target)
        self._record({"queued": call.id, "name": call.name, "args": _encode(call.args), "placeholder": call.placeholder})
        self.pending.append(call)
