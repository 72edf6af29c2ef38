"""Bad input is refused early: exit 2, at most three lines naming the key and value (or the file or
URI), no traceback, and nothing started or written — no Ray, no MLflow store, no storage folder.

Most cases call ``run.main`` in-process (a subprocess costs seconds here); a few run the real CLI.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jepa_sweeps.config import ConfigError
from jepa_sweeps.run import main
from jepa_sweeps.spec import SweepSpec, apply_overrides, load_spec, parse_spec
from jepa_sweeps.storage import locate, write_state

BAD_SPECS = sorted((Path(__file__).parent / "bad_specs").glob("*.yaml"))
#: cases also run through the real CLI, end to end
CLI_CASES = ["syntax_unclosed_bracket", "unknown_regulariser", "tracking_unreachable"]
GOOD_SPEC = """\
name: good
trial:
  epochs: 2
  views: {n_global: 2, n_local: 2}
search:
  objective.lam: {loguniform: [0.01, 0.5]}
points:
  - {objective.lam: 0.05}
num_samples: 3
scheduler: {name: fifo}
"""


def expectation(path: Path) -> str:
    """The substring a corpus file's error must contain, from its first line."""
    first = (path.read_text().splitlines() or [""])[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect: <substring>' first line"
    return first.removeprefix("# expect: ")


def refused(rc: int, stderr: str, expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert rc == 2, stderr
    assert 1 <= len(lines) <= 3, stderr
    assert "Traceback" not in stderr, stderr
    assert expected in stderr, f"expected {expected!r} in:\n{stderr}"


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["JEPA_SWEEPS_HOME"] = os.environ["JEPA_SWEEPS_HOME"]
    return subprocess.run(
        [sys.executable, "-m", "jepa_sweeps.run", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_corpus_is_large_and_annotated() -> None:
    assert len(BAD_SPECS) >= 30
    for path in BAD_SPECS:
        assert expectation(path)


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_bad_spec_is_refused(path: Path, sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([str(path)])
    out = capsys.readouterr()
    refused(rc, out.err, expectation(path))
    assert out.out == ""  # not even the plan


@pytest.mark.parametrize("name", CLI_CASES)
def test_bad_spec_is_refused_by_the_cli(name: str, sandbox: Path) -> None:
    path = Path(__file__).parent / "bad_specs" / f"{name}.yaml"
    done = run_cli([str(path)], sandbox)
    refused(done.returncode, done.stderr, expectation(path))
    assert done.stdout == ""


@pytest.fixture
def good_spec(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_SPEC)
    return path


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trial.nope=1"], "trial.nope=1: unknown key"),
        (["epochs=-1"], "trial.epochs=-1"),
        (["epochs"], "--set 'epochs': expected key=value"),
        (["=3"], "expected key=value"),
        (["epochs=[1"], "--set epochs='[1': not a valid YAML value"),
        (["objective.name=byol"], "trial.objective.name='byol': unknown"),
        (["resources.workers=0"], "resources.workers=0"),
        (["workers=3"], "trial.workers=3: set resources.workers instead"),
        (["optim.batch_size=129"], "trial.optim.batch_size=129"),
        (["search.objective.lam={loguniform: [0, 1]}"], "search.objective.lam: loguniform"),
        (["mlflow.tracking_uri=http://127.0.0.1:9/"], "http://127.0.0.1:9/"),
        (["name=../escape"], "name='../escape'"),
    ],
)
def test_bad_override_is_refused(
    overrides: list[str], expected: str, good_spec: Path, sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main([str(good_spec), *(a for o in overrides for a in ("--set", o))])
    refused(rc, capsys.readouterr().err, expected)


def test_bad_override_is_refused_by_the_cli(good_spec: Path, sandbox: Path) -> None:
    done = run_cli([str(good_spec), "--set", "epochs=-1"], sandbox)
    refused(done.returncode, done.stderr, "trial.epochs=-1")


def test_missing_spec_file(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(main(["no/such/spec.yaml"]), capsys.readouterr().err, "'no/such/spec.yaml': not found")


def test_good_spec_dry_run_writes_nothing(good_spec: Path, sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(good_spec), "--dry-run"]) == 0
    assert "sweep 'good'" in capsys.readouterr().out


def fake_earlier_sweep(spec_file: Path, state: Any) -> Path:
    """Record a sweep of the same name as ``write_state`` would (``state`` raw if not a dict)."""
    spec = load_spec(spec_file)
    loc = locate(spec)
    if isinstance(state, dict):
        write_state(loc, state)
    path = Path(loc.state_path)
    if not isinstance(state, dict):
        path.parent.mkdir(parents=True)
        path.write_text(state)
    return path


def forget(state: Path) -> None:
    """Remove a fake state and its folders up to the home (``rmdir`` fails if anything else
    appeared), so that the sandbox can check the rest."""
    state.unlink()
    for folder in state.parents[:3]:
        folder.rmdir()


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"digest": "0123456789abcdef", "parent_run_id": "r", "experiment_id": "1"}, "the spec changed"),
        ("{not json", "unreadable state"),
        ("[1, 2]", "unreadable state"),
    ],
)
def test_edited_spec_needs_fresh(
    state: Any, expected: str, good_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("JEPA_SWEEPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    fake_earlier_sweep(good_spec, state)
    before = tree(home)
    rc = main([str(good_spec)])
    err = capsys.readouterr().err
    refused(rc, err, expected)
    assert "name='good'" in err and "--fresh" in err
    assert main([str(good_spec), "--fresh", "--dry-run"]) == 0
    assert tree(home) == before and not ray.is_initialized()


def test_edited_spec_needs_fresh_in_the_cli(good_spec: Path, sandbox: Path) -> None:
    state = fake_earlier_sweep(good_spec, {"digest": "0123456789abcdef"})
    done = run_cli([str(good_spec), "--set", "epochs=3"], sandbox)
    refused(done.returncode, done.stderr, "--fresh")
    assert "name='good'" in done.stderr
    forget(state)


def test_unchanged_spec_resumes_without_error(
    good_spec: Path, sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = fake_earlier_sweep(good_spec, {"digest": load_spec(good_spec).digest()})
    assert main([str(good_spec), "--dry-run"]) == 0
    assert "resuming" in capsys.readouterr().out
    forget(state)


# --- property-based: the parser accepts or raises ConfigError, nothing else ---------------------

OBJECTIVES = ["sigreg", "vicreg", "ema", "infonce"]
SEARCHABLE = [
    "objective.name", "objective.lam", "objective.temperature", "objective.cov_weight", "objective.momentum",
    "views.n_global", "views.n_local", "views.global_size", "optim.batch_size", "optim.lr", "epochs", "seed",
    "encoder.name", "objective", "views", "nope", "objective.nope", "",
]
KEYS = ["epochs", "views", "optim", "objective", "encoder", "data", "name", "lam", "when", "kind", "nope", "", "a.b"]
scalars = (
    st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(OBJECTIVES + ["cnn", "vit", "digits", "cifar10", "../x", "~nobody/x"]) | st.text(max_size=6)
    | st.dates()  # YAML reads 2024-01-01 as a date
)
keys = st.sampled_from(KEYS + SEARCHABLE) | st.text(max_size=4) | st.integers(-1, 1)
junk = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4), max_leaves=12
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values, sometimes junk: deep validation is reached, and so are odd corners."""
    return st.integers(0, 7).flatmap(lambda i: strategy if i else junk)


def section(fields: dict[str, st.SearchStrategy[Any]], required: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """A mapping of known keys (plausible values, some left out) and maybe an unknown one."""
    known = st.fixed_dictionaries(
        {k: maybe(v) for k, v in fields.items() if k in required},
        optional={k: maybe(v) for k, v in fields.items() if k not in required},
    )
    unknown = st.dictionaries(keys, junk, max_size=1) | st.just({})
    return maybe(st.tuples(known, unknown).map(lambda pair: {**pair[1], **pair[0]}))


number = st.integers(-2, 300) | st.floats(-1, 2) | st.sampled_from([0.05, 0.5, 1e-3])
bounds = st.lists(number, min_size=2, max_size=2).map(sorted) | st.lists(number, max_size=3)
when = st.sampled_from(OBJECTIVES) | st.lists(st.sampled_from(OBJECTIVES + ["byol"]), max_size=2)
options = st.lists(number | st.sampled_from(OBJECTIVES + ["cnn", "vit"]), max_size=4)
leaf_distribution = st.one_of(
    st.builds(lambda kind, b: {kind: b}, st.sampled_from(["uniform", "loguniform", "int"]), bounds),
    st.builds(lambda o: {"choice": o}, options),
    st.fixed_dictionaries(  # the parsed form, which is accepted too
        {"kind": st.sampled_from(["uniform", "loguniform", "int", "choice", "x"])},
        optional={"low": number, "high": number, "options": options, "when": when},
    ),
)
distribution = st.one_of(
    leaf_distribution,
    st.builds(lambda o: {"choice": o}, st.lists(number | leaf_distribution, max_size=3)),
    st.builds(lambda d, w: {**d, "when": w}, leaf_distribution, when),
)
trial = section({
    "epochs": st.integers(-1, 5),
    "views": section({
        "n_global": st.integers(0, 3), "n_local": st.integers(-1, 4),
        "global_size": st.integers(0, 40), "local_size": st.integers(0, 10),
    }),
    "optim": section({"batch_size": st.integers(-1, 300), "lr": number}),
    "objective": section({
        "name": st.sampled_from(OBJECTIVES + ["byol"]), "lam": number, "temperature": number, "momentum": number,
    }),
    "encoder": section({"name": st.sampled_from(["cnn", "vit", "resnet18", "mlp"]), "patch_size": st.integers(0, 9)}),
    "data": section({
        "name": st.sampled_from(["digits", "cifar10", "imagefolder"]),
        "path": st.sampled_from(["/nonexistent", "/tmp", "~nobody/x", "a\x00b"]),
    }),
    "workers": st.integers(0, 3),
})
names = st.integers(0, 3).flatmap(lambda i: st.just("ok") if i else st.sampled_from(["a/b", "..", "", "x" * 101]))
specs = section({
    "name": names,
    "trial": trial,
    "search": st.dictionaries(st.sampled_from(SEARCHABLE), maybe(distribution), max_size=4),
    "points": st.lists(
        st.dictionaries(st.sampled_from(SEARCHABLE), maybe(number | st.sampled_from(OBJECTIVES))), max_size=3
    ),
    "num_samples": st.integers(0, 12),
    "seeds": st.integers(0, 3),
    "scheduler": section({"name": st.sampled_from(["asha", "fifo", "hyperband"]), "grace_period": st.integers(0, 3)}),
    "optuna": section({"n_startup_trials": st.integers(-1, 12), "seed": st.integers(-1, 3)}),
    "resources": section({"workers": st.integers(0, 4), "cpus_per_worker": number}),
    "mlflow": section({
        "tracking_uri": st.sampled_from(["http://[::1", "http://h:x/", "sqlite:///m.db", "x"]),
        "experiment": st.sampled_from(["e", "../e", "/e", ".", ""]),
    }),
    "storage": st.sampled_from(["/tmp/s", "~nobody/s", "s3://b/s", "a\x00b"]),
}, required=("name",))


def parses_or_refuses(raw: Any) -> None:
    try:
        spec = parse_spec(raw)
    except ConfigError as err:
        assert 1 <= len(str(err).splitlines()) <= 3, str(err)
        return
    assert isinstance(spec, SweepSpec)
    spec.digest()


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
@example({"name": "ok", "trial": {"epochs": datetime.date(2024, 1, 1)}})  # YAML dates broke a JSON copy
@example({"name": "ok", "search": {"objective.lam": {"uniform": [0, 1], "when": 3}}})
@example({"name": "ok", "search": {"objective.lam": {1: 2, "a": 3}}})  # mixed key types broke sorting
@example({"name": "ok", "search": {"objective.lam": {"kind": "uniform"}}})  # the parsed form without bounds
@example({"name": "ok", "trial": {"data": {"name": "cifar10", "path": "~nobody/x"}}})  # RuntimeError of "~"
@example({"name": "ok", "storage": "~nobody/x", "mlflow": {"tracking_uri": "http://[::1"}})
def test_generated_specs_parse_or_raise_config_error(raw: Any) -> None:
    parses_or_refuses(raw)


dotted = st.lists(st.sampled_from(KEYS), min_size=1, max_size=3).map(".".join)
override_keys = st.sampled_from(KEYS + SEARCHABLE + ["resources.workers", "seeds"]) | dotted
override_keys |= override_keys.map("search.{}".format)
override_values = st.sampled_from(["1", "-1", "0.5", "[", "{", "{loguniform: [0.01, 0.5]}", "{choice: []}", "x", ""])
overrides = st.lists(
    st.tuples(override_keys, st.sampled_from(["=", "", "=="]), override_values | st.text(max_size=6)).map("".join),
    max_size=4,
)


@settings(max_examples=300, deadline=None, database=None)
@given(overrides)
def test_generated_overrides_apply_or_raise_config_error(items: list[str]) -> None:
    try:
        raw = apply_overrides(yaml.safe_load(GOOD_SPEC), items)
    except ConfigError:
        return
    parses_or_refuses(raw)
