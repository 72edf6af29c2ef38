"""A sweep's folder in Ray storage and its state file: names cannot collide, ``--fresh`` touches
only its own sweep, state round-trips on local disk and S3, and a resume into another tracking
store is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from jepa_sweeps.config import ConfigError
from jepa_sweeps.run import main
from jepa_sweeps.spec import parse_spec
from jepa_sweeps.storage import Locations, delete_sweep, locate, read_state, tracking_record, write_state


def located(name: str, storage: str) -> Locations:
    return locate(parse_spec({"name": name, "storage": storage, "mlflow": {"tracking_uri": "sqlite:////srv/m.db"}}))


def fill(loc: Locations) -> list[Path]:
    """Files where the sweep's Tune experiment, Train checkpoints and state go."""
    files = [Path(loc.tune_path, "experiment_state.json"), Path(loc.train_path, "train-1", "checkpoint_0", "s.pt")]
    for file in files:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("x")
    write_state(loc, {"digest": "d"})
    return [*files, Path(loc.state_path)]


@pytest.mark.parametrize("other", ["X.train", "X.tune", "X_train", "train", "tune"])
def test_fresh_of_one_sweep_leaves_another_sweeps_files(tmp_path: Path, other: str) -> None:
    x, y = located("X", str(tmp_path)), located(other, str(tmp_path))
    kept = fill(x)
    gone = fill(y)
    delete_sweep(y)
    assert all(f.is_file() for f in kept)
    assert not any(f.exists() for f in gone) and not Path(y.folder).exists()
    delete_sweep(y)  # nothing left: fine


@settings(max_examples=200, deadline=None, database=None)
@given(a=st.text(alphabet="ab.-_", min_size=1, max_size=6), b=st.text(alphabet="ab.-_", min_size=1, max_size=6))
def test_no_sweep_folder_holds_another_sweeps_paths(a: str, b: str) -> None:
    try:
        x, y = located(a, "/srv/s"), located(b, "/srv/s")
    except ConfigError:
        return
    if a == b:
        return
    for path in (y.folder, y.tune_path, y.train_path, y.state_path):
        assert not Path(path).is_relative_to(x.folder), (a, b, path)


def test_state_round_trips_locally(tmp_path: Path) -> None:
    loc = located("s", str(tmp_path / "deep" / "storage"))
    assert read_state(loc) is None
    write_state(loc, {"digest": "abc", "n": [1, 2]})
    assert read_state(loc) == {"digest": "abc", "n": [1, 2]}


def test_state_and_fresh_on_s3(s3_bucket: str) -> None:
    x, y = located("X", f"{s3_bucket}/sweeps"), located("X.train", f"{s3_bucket}/sweeps")
    assert read_state(x) is None
    write_state(x, {"digest": "x"})
    write_state(y, {"digest": "y"})
    delete_sweep(y)
    assert read_state(y) is None and read_state(x) == {"digest": "x"}


def test_tracking_record_hides_the_password_and_tells_stores_apart() -> None:
    one, two = tracking_record("http://u:pw1@h:5000"), tracking_record("http://u:pw2@h:5000")
    assert "pw1" not in one["uri"] and one["uri"] == two["uri"]
    assert one["sha256"] != two["sha256"]


def test_resume_into_another_tracking_store_is_refused(tmp_path: Path, home: Path, capsys) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "moved", "storage": str(tmp_path / "storage")}))
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    write_state(located_from(spec, first), {"digest": digest_of(spec), "tracking": tracking_record(first)})
    assert main([str(spec), "--set", f"mlflow.tracking_uri={first}", "--dry-run"]) == 0
    capsys.readouterr()
    assert main([str(spec), "--set", f"mlflow.tracking_uri={second}", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a.db" in err and "b.db" in err and "--fresh" in err, err
    assert main([str(spec), "--set", f"mlflow.tracking_uri={second}", "--dry-run", "--fresh"]) == 0


def located_from(spec: Path, uri: str) -> Locations:
    from jepa_sweeps.spec import load_spec

    return locate(load_spec(str(spec), [f"mlflow.tracking_uri={uri}"]))


def digest_of(spec: Path) -> str:
    from jepa_sweeps.spec import load_spec

    return load_spec(str(spec)).digest()
