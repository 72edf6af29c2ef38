"""Where a sweep lives: its locations, its folder in Ray storage, and its state file.

Everything one sweep writes to Ray storage is under its own folder ``<storage>/<name>/``: Tune's
experiment (``tune/``), Train's runs (``train/``) and the state file recording the spec digest,
the parent MLflow run and the tracking store. Names cannot contain ``/``, so no sweep's folder is
inside another's and one sweep's ``--fresh`` cannot touch another sweep's files.

Kept free of Ray, MLflow and torch imports: the runner's validation and the report use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from jepa_sweeps.home import home
from jepa_sweeps.redaction import redact
from jepa_sweeps.spec import SweepSpec

SWEEP_STATE_FILE = "jepa_sweeps.json"
TUNE_FOLDER = "tune"  # Tune's experiment name inside the sweep's folder
TRAIN_FOLDER = "train"  # Train's runs (checkpoints) inside the sweep's folder


def is_uri(path: str) -> bool:
    return "://" in path


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding an absolute local path or a URI, and the path inside it."""
    return pafs.FileSystem.from_uri(path)


def safe_name(text: str) -> str:
    """A file-name part: no path separators or other surprises."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("._") or "_"


def report_folder(experiment: str) -> Path:
    """The default folder of an experiment's report."""
    return home() / "reports" / safe_name(experiment)


@dataclass(frozen=True)
class Locations:
    """Absolute places a sweep reads and writes (the same on every Ray node)."""

    storage: str  # Ray storage: absolute path or URI
    tracking_uri: str
    experiment: str
    name: str  # the sweep's name: its folder in ``storage``

    @property
    def folder(self) -> str:
        """Everything this sweep keeps in Ray storage, and nothing of any other sweep."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def tune_path(self) -> str:
        """Tune's experiment (what ``Tuner.restore`` takes)."""
        return f"{self.folder}/{TUNE_FOLDER}"

    @property
    def train_path(self) -> str:
        """Where Train runs keep their checkpoints (one run per Tune trial)."""
        return f"{self.folder}/{TRAIN_FOLDER}"

    @property
    def state_path(self) -> str:
        return f"{self.folder}/{SWEEP_STATE_FILE}"

    @property
    def artifact_root(self) -> str | None:
        """Artifacts of a local SQLite store go to a folder beside it; a server decides its own."""
        if urlparse(self.tracking_uri).scheme == "sqlite":
            database = Path(self.tracking_uri.removeprefix("sqlite:///"))
            return (database.parent / "mlartifacts" / self.experiment).as_uri()
        return None


def locate(spec: SweepSpec) -> Locations:
    storage = spec.storage or str(home() / "ray_results")
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    uri = spec.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        uri = f"sqlite:///{Path(path).expanduser().resolve()}"
    elif not parsed.scheme and uri != "databricks":  # MLflow's name for the Databricks workspace
        uri = f"sqlite:///{Path(uri).expanduser().resolve()}"
    return Locations(storage, uri, spec.mlflow.experiment or spec.name, spec.name)


def queue_file(loc: Locations) -> Path:
    """The append-only journal of MLflow writes queued during an outage (``retry.BufferedClient``):
    in the sweep's folder, or under the home when storage is a bucket (no appending there)."""
    if is_uri(loc.storage):
        return home() / "queues" / f"{loc.name}.jsonl"
    return Path(loc.folder) / "mlflow_queue.jsonl"


def read_state(loc: Locations) -> Any:
    """The recorded state of an earlier sweep with this name (parsed JSON), or None."""
    fs, inner = filesystem(loc.state_path)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(inner) as f:
        return json.loads(f.read())


def write_state(loc: Locations, state: Any) -> None:
    fs, inner = filesystem(loc.state_path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(json.dumps(state, indent=2).encode())


def delete_sweep(loc: Locations) -> None:
    """``--fresh``: forget the sweep's folder (Tune experiment, Train checkpoints, state); MLflow keeps the runs."""
    fs, inner = filesystem(loc.folder)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)


def tracking_record(uri: str) -> dict[str, str]:
    """How the state file names a tracking store: redacted for people, a digest of the full URI to compare."""
    return {"uri": redact(uri), "sha256": hashlib.sha256(uri.encode()).hexdigest()}


def other_store(state: dict[str, Any], loc: Locations) -> str | None:
    """The redacted tracking URI an earlier sweep recorded, when it is not ``loc``'s; else None."""
    recorded = state.get("tracking")
    if not isinstance(recorded, dict) or recorded.get("sha256") == tracking_record(loc.tracking_uri)["sha256"]:
        return None
    return str(recorded.get("uri", "an unrecorded store"))
