"""The classes of input a careful user (or an attacker) brings, each refused cleanly: exit 2, at most
three lines, no traceback, nothing started or written, and no credential in any output.

``tests/bad_specs/`` holds hand-written files; here each class is generated from small templates:
hostile YAML (aliases, depth, duplicate keys, size, tags), credentials in every field that prints a
URI, numbers that are not (booleans, infinities), metrics no trial reports, data folders that hold
no data, tracking stores and storage that cannot work. Hypothesis then generates more of each.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jepa_sweeps.redaction import redact, shorten
from jepa_sweeps.run import main
from jepa_sweeps.spec import load_spec
from tests.fake_datasets import write_cifar10, write_imagefolder
from tests.test_bad_input import BAD_SPECS, refused

SECRET = "S3cr3tPW"
BASE = "name: t\nscheduler: {name: fifo}\nnum_samples: 1\n"


def doc(**fields: Any) -> str:
    """A small valid spec with ``fields`` replaced, as YAML text."""
    spec = {"name": "t", "scheduler": {"name": "fifo"}, "num_samples": 1, **fields}
    return yaml.safe_dump(spec, sort_keys=False)


def bomb(levels: int, width: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return BASE + "\n".join(lines) + "\n"


# (id, spec text, expected substring); "{data}" in a text is a folder made by DATA_FOLDERS[id]
CASES: list[tuple[str, str, str]] = []


def case(name: str, text: str, expected: str) -> None:
    CASES.append((name, text, expected))


# --- class 2: hostile YAML ------------------------------------------------------------------------
for levels, width in [(9, 9), (10, 10), (6, 20), (20, 3), (4, 60)]:
    case(f"alias_bomb_{levels}x{width}", bomb(levels, width), "expands to more than")
case("alias_bomb_in_trial", bomb(8, 10).replace(BASE, "name: t\n") + "trial: {epochs: *a7}\n", "expands to more than")
case("alias_too_many", BASE + "v: &v 1\nl: [" + ", ".join(["*v"] * 300) + "]\n", "alias uses")
case("alias_self_sequence", BASE + "x: &a [1, *a]\n", "refers to itself")
case("alias_self_mapping", BASE + "x: &a {k: *a}\n", "refers to itself")
case("alias_self_nested", BASE + "x: &a {k: [1, {j: *a}]}\n", "refers to itself")
case("alias_self_trial", "name: t\ntrial: &t {data: *t}\n", "refers to itself")
case("alias_undefined", BASE + "x: *nowhere\n", "YAML")
for depth in (33, 100, 800, 5000):
    case(f"deep_flow_list_{depth}", BASE + "x: " + "[" * depth + "]" * depth + "\n", "nested deeper than")
case("deep_flow_map_800", BASE + "x: " + "{a: " * 800 + "1" + "}" * 800 + "\n", "nested deeper than")
case("deep_block_map_800", BASE + "".join("  " * i + f"k{i}:\n" for i in range(800)), "nested deeper than")
case("deep_block_list_400", BASE + "x:\n" + "".join("  " * i + "-\n" for i in range(1, 400)), "nested deeper than")
case("deep_trial", "name: t\ntrial: " + "{views: " * 40 + "{}" + "}" * 40 + "\n", "nested deeper than")
case("duplicate_trial", "name: t\ntrial: {epochs: 2}\ntrial: {epochs: 3}\n", "duplicate key 'trial'")
case("duplicate_name", "name: a\nname: b\n", "duplicate key 'name'")
case("duplicate_nested", "name: t\ntrial:\n  epochs: 2\n  epochs: 3\n", "duplicate key 'epochs'")
case("duplicate_flow", "name: t\ntrial: {optim: {lr: 0.1, lr: 0.2}}\n", "duplicate key 'lr'")
case("duplicate_search", "name: t\nsearch:\n  objective.lam: {uniform: [0, 1]}\n  objective.lam: {choice: [0]}\n",
     "duplicate key 'objective.lam'")
case("duplicate_in_point", "name: t\npoints:\n  - {objective.lam: 0.1, objective.lam: 0.2}\n", "duplicate key")
case("python_object_tag", "name: !!python/object/apply:os.system ['true']\n", "YAML")
case("python_name_tag", "name: t\ntrial: !!python/name:os.system\n", "YAML")
case("unknown_tag", "name: !secret t\n", "YAML")
case("nul_character", "name: t\x00\n", "YAML")
case("huge_unknown_key", BASE + "? " + "k" * 50_000 + "\n: 1\n", "unknown key")
case("huge_value", "name: " + "n" * 200_000 + "\n", "name=")
case("huge_choice", BASE + "search:\n  objective.lam: {choice: [" + ", ".join(["0.1"] * 20_000) + "]}\n", "choice")
case("multi_document", "name: a\n---\nname: b\n", "YAML")

# --- class 1: credentials never printed ----------------------------------------------------------
for label, uri in [
    ("password", f"http://user:{SECRET}@127.0.0.1:9/"),
    ("password_raw_at", f"http://user:{SECRET}@x@127.0.0.1:9/"),
    ("password_raw_slash", f"http://user:ab/{SECRET}@127.0.0.1:9/"),
    ("password_raw_question", f"http://user:ab?{SECRET}@127.0.0.1:9/"),
    ("token_user", f"https://{SECRET}@127.0.0.1:9/"),
    ("long_prefix", "http://" + "u" * 70 + f":{SECRET}@127.0.0.1:9/"),
    ("query_token", f"http://127.0.0.1:9/?token={SECRET}"),
    ("postgres_password", f"postgresql://user:{SECRET}@127.0.0.1:9/mlflow"),
    ("mysql_password", f"mysql+pymysql://user:{SECRET}@127.0.0.1:9/mlflow"),
    ("unknown_scheme_password", f"mongodb://user:{SECRET}@127.0.0.1:9/"),
]:
    case(f"secret_tracking_{label}", doc(mlflow={"tracking_uri": uri}), "mlflow.tracking_uri=")
for label, uri in [
    ("s3_key", f"s3://AKIAKEY:{SECRET}@bucket/jepa"),
    ("s3_token", f"s3://{SECRET}@bucket/jepa"),
    ("gs_raw_at", f"gs://k:{SECRET}@x@bucket/jepa"),
]:
    case(f"secret_storage_{label}", doc(storage=uri), "holds credentials")
case("secret_in_unknown_key", doc(nme=f"http://u:{SECRET}@h/"), "nme=")
case("secret_in_search", doc(num_samples=2, search={"objective.lam": {"choice": [f"http://u:{SECRET}@h/"]}}), "search.objective.lam")
case("secret_in_point", doc(num_samples=2, search={"objective.lam": {"uniform": [0, 1]}},
                            points=[{"objective.lam": f"s3://k:{SECRET}@b"}]), "points[0].objective.lam")
case("secret_in_experiment", doc(mlflow={"experiment": f"http://u:{SECRET}@h/e"}), "mlflow.experiment=")
case("secret_in_data_path", doc(trial={"data": {"name": "cifar10", "path": f"s3://u:{SECRET}@b/x"}}), "trial.data.path=")
case("secret_long_value", doc(trial={"epochs": "x" * 60 + f"http://user:{SECRET}@h/"}), "trial.epochs=")

# --- class 3: numbers that are not, values no trial can use ---------------------------------------
for key, value in [
    ("epochs", True), ("seed", False), ("optim.lr", True), ("optim.batch_size", True), ("views.n_local", True),
    ("objective.lam", True), ("views.global_scale", [True, 1]), ("eval.knn_k", True), ("threads", True),
]:
    tree: dict[str, Any] = {}
    *path, leaf = key.split(".")
    node = tree
    for part in path:
        node = node.setdefault(part, {})
    node[leaf] = value
    case(f"bool_trial_{key}", doc(trial=tree), f"trial.{key}=")
for key, text in [("num_samples", "true"), ("resources", "{workers: true}"), ("optuna", "{seed: true}"),
                  ("scheduler", "{name: asha, grace_period: true}")]:
    case(f"bool_{key}", BASE.replace("num_samples: 1\n", "") + f"{key}: {text}\n", key)
for key, text in [
    ("trial", "{optim: {warmup_epochs: .inf}}"), ("trial", "{optim: {lr: .nan}}"), ("trial", "{objective: {lam: .nan}}"),
    ("trial", "{views: {ratio: [0.5, .inf]}}"), ("resources", "{cpus_per_worker: .inf}"),
    ("scheduler", "{name: asha, reduction_factor: .inf}"), ("search", "{objective.lam: {uniform: [0, .inf]}}"),
    ("search", "{objective.lam: {choice: [.nan, 0.1]}}"), ("points", "[{objective.lam: .nan}]"),
    ("resources", "{driver_resources: {head: .nan}}"), ("description", "-.inf"),
]:
    base = "".join(line + "\n" for line in BASE.splitlines() if not line.startswith(key))
    case(f"nonfinite_{key}_{len(CASES)}", base.replace("num_samples: 1\n", "num_samples: 3\n") + f"{key}: {text}\n",
         "not a finite number")
for seed in (2**32, 2**64, -1):
    case(f"optuna_seed_{seed}", doc(optuna={"seed": seed}), "optuna.seed=")
for metric, extra in [
    ("knn_accuracy", {}), ("accuracy", {}), ("final_linear_acc", {}), ("attn_entropy", {}), ("knn_acc_2x", {}),
    ("var_loss", {}), ("momentum", {}),
    ("var_loss", {"search": {"objective.name": {"choice": ["sigreg", "vicreg"]}}}),
    ("attn_entropy", {"search": {"encoder.name": {"choice": ["cnn", "vit"]}}}),
]:
    case(f"metric_{metric}_{len(extra)}", doc(metric=metric, num_samples=2, **extra), f"metric='{metric}'")
for name, resources, expected in [
    ("negative", {"driver_resources": {"head": -1}}, "positive"),
    ("zero", {"driver_resources": {"head": 0}}, "positive"),
    ("bad_name", {"driver_resources": {"a b": 1}}, "resource name"),
    ("cluster_max_negative", {"cluster_max": {"GPU": -2}}, "positive"),
    ("gpus_negative", {"gpus_per_worker": -1}, "gpus_per_worker"),
    ("unknown_key", {"gpu": 1}, "resources.gpu"),
]:
    case(f"resources_{name}", doc(resources=resources), expected)

# --- class 3: tracking stores and storage that cannot work ---------------------------------------
for label, uri, expected in [
    ("sqlite_relative_two_slashes", "sqlite://relative.db", "sqlite:///"),
    ("sqlite_memory", "sqlite://", "sqlite:///"),
    ("sqlite_proc", "sqlite:////proc/nope/mlflow.db", "cannot write"),
    ("sqlite_folder", "sqlite:////tmp", "is a folder"),
    ("databricks", "databricks", "Databricks"),
    ("databricks_profile", "databricks://profile", "Databricks"),
    ("file_store", "file:///tmp/mlruns", "file store"),
    ("postgres_no_driver", "postgresql://u@127.0.0.1:9/db", "driver"),
    ("mysql_no_driver", "mysql://u@127.0.0.1:9/db", "driver"),
    ("bad_dialect", "postgresql+nodriver://u@127.0.0.1:9/db", "not a usable database URI"),
    ("mongodb", "mongodb://127.0.0.1:9/", "unsupported scheme"),
    ("ftp", "ftp://127.0.0.1/mlflow", "unsupported scheme"),
    ("http_refused", "http://127.0.0.1:9/", "not reachable"),
    ("https_refused", "https://127.0.0.1:9/", "not reachable"),
    ("empty", "", "empty"),
    ("blank", "  ", "empty"),
]:
    case(f"tracking_{label}", doc(mlflow={"tracking_uri": uri}), expected)
for label, storage, expected in [
    ("proc", "/proc/nope/ray", "cannot write"),
    ("file_uri_proc", "file:///proc/nope/ray", "cannot write"),
    ("file_uri_relative", "file://relative/ray", "absolute path"),
    ("under_a_file", "/proc/version/ray", "not a folder"),
    ("unknown_scheme", "ftp://host/ray", "unsupported scheme"),
    ("s3_no_bucket", "s3:///ray", "names no bucket"),
    ("mock_scheme", "mock://x/ray", "unsupported scheme"),
    ("empty", "", "empty"),
    ("spaces", " /tmp/x", "surrounded by spaces"),
]:
    case(f"storage_{label}", doc(storage=storage), expected)

# --- class 3: data folders that exist but hold no usable data -------------------------------------
DATA_FOLDERS: dict[str, Callable[[Path], Path]] = {}


def data_case(name: str, dataset: str, build: Callable[[Path], Path], expected: str) -> None:
    DATA_FOLDERS[f"data_{name}"] = build
    case(f"data_{name}", doc(trial={"data": {"name": dataset, "path": "{data}"}}), expected)


def folders(*names: str) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        root.mkdir(parents=True)
        for name in names:
            (root / name).mkdir(parents=True)
        return root

    return build


def emptied(builder: Callable[[Path], Path], pattern: str, truncate: bool = False) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        folder = builder(root)
        for file in sorted(folder.rglob(pattern)):
            file.write_bytes(b"") if truncate else file.unlink()
        return folder

    return build


data_case("imagefolder_empty", "imagefolder", folders(), "expected train/ and val/")
data_case("imagefolder_no_val", "imagefolder", folders("train/a"), "expected train/ and val/")
data_case("imagefolder_no_classes", "imagefolder", folders("train", "val"), "no class folders")
data_case("imagefolder_empty_classes", "imagefolder", folders("train/a", "val/a"), "no images")
data_case("imagefolder_classes_differ", "imagefolder", folders("train/a", "val/b"), "class folders differ")
data_case("imagefolder_empty_val_class", "imagefolder",
          emptied(lambda r: write_imagefolder(r / "f", per_class=1), "val/a/*"), "no images")
def text_files(root: Path) -> Path:
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        (root / split / "a" / "notes.txt").write_text("not an image")
    return root


data_case("imagefolder_not_images", "imagefolder", text_files, "no images")
data_case("cifar10_empty", "cifar10", folders(), "no CIFAR-10 batches")
data_case("cifar100_empty", "cifar100", folders(), "no CIFAR-100 files")
data_case("stl10_empty", "stl10", folders(), "no STL-10 binaries")
data_case("cifar10_missing_batch", "cifar10", emptied(lambda r: write_cifar10(r / "c"), "data_batch_3"), "missing data_batch_3")
data_case("cifar10_empty_files", "cifar10", emptied(lambda r: write_cifar10(r / "c"), "*_batch*", truncate=True),
          "empty file")
case("data_relative_missing", doc(trial={"data": {"name": "cifar10", "path": "no/such/folder"}}), "no such folder")


def test_corpus_holds_150_cases_covering_every_class() -> None:
    assert len(CASES) + len(BAD_SPECS) >= 150, len(CASES) + len(BAD_SPECS)
    prefixes = {name.split("_")[0] for name, _, _ in CASES}
    assert {"alias", "deep", "duplicate", "secret", "bool", "nonfinite", "metric", "data", "tracking", "storage",
            "resources", "optuna"} <= prefixes


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_hostile_spec_is_refused(
    name: str, text: str, expected: str, sandbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if name in DATA_FOLDERS:
        text = text.replace("'{data}'", str(DATA_FOLDERS[name](tmp_path / "data")))
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    started = time.monotonic()
    rc = main([str(spec), "--dry-run"])
    elapsed = time.monotonic() - started
    out = capsys.readouterr()
    refused(rc, out.err, expected)
    assert out.out == ""
    assert SECRET not in out.err
    assert elapsed < 30, elapsed  # a bound on hanging, not a speed goal


def test_relative_data_path_is_resolved_against_the_working_directory(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials run in another working directory: the runner resolves the path where it starts."""
    write_cifar10(tmp_path / "cifar")
    monkeypatch.chdir(tmp_path)
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(doc(trial={"data": {"name": "cifar10", "path": "cifar"}}))
    loaded = load_spec(spec_file)
    assert loaded.trial["data"]["path"] == str(tmp_path / "cifar")
    monkeypatch.chdir("/")
    assert loaded.trial_for({}).data.path == str(tmp_path / "cifar")


def test_a_merge_key_then_an_explicit_key_is_no_duplicate(tmp_path: Path) -> None:
    """``<<: {...}`` then an explicit key is YAML's way to override: allowed."""
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("name: t\ntrial:\n  <<: {epochs: 2, seed: 1}\n  epochs: 3\n")
    assert load_spec(spec_file).trial == {"epochs": 3, "seed": 1}


@pytest.mark.parametrize("uri", [
    "http://user:{s}@host:5000/x", "http://user:{s}@x@host/", "http://u:ab/{s}@host/", "https://{s}@host",
    "s3://AKIA:{s}@bucket/x", "postgresql://u:{s}@db/x?sslpassword={s}", "https://h/x?token={s}&a=1",
    "gs://{s}@bucket", "mysql+pymysql://u:{s}@h:1/x",
])
def test_redact_before_shortening(uri: str) -> None:
    """Every form leaves no part of the secret, whatever the cut."""
    text = "x" * 40 + " " + uri.format(s=SECRET) + " tail"
    for limit in range(20, len(text) + 5, 7):
        assert SECRET[:4] not in shorten(text, limit)
    assert SECRET[:4] not in redact(text)
    assert redact(redact(text)) == redact(text)


# --- property-based: hostile YAML and planted secrets ---------------------------------------------

scalar = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none(), st.text(max_size=20),
    st.sampled_from([".inf", "-.inf", ".nan", "true", "~", "0x1F", "1e400", "'x'", '"\\u0000"']),
    st.integers(1000, 300_000).map(lambda n: "z" * n),  # huge scalars
)
KEYS = ["name", "trial", "epochs", "search", "points", "metric", "optuna", "seed", "resources", "workers",
        "num_samples", "mlflow", "storage", "data", "path", "views", "objective.lam", "<<"]


def render(node: Any, depth: int, anchors: list[str]) -> str:
    """Flow-style YAML of a generated tree; strings starting with '*' become aliases."""
    if isinstance(node, dict):
        return "{" + ", ".join(f"{k}: {render(v, depth + 1, anchors)}" for k, v in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(render(v, depth + 1, anchors) for v in node) + "]"
    if isinstance(node, str) and node.startswith("*") and anchors:
        return f"*{anchors[hash(node) % len(anchors)]}"
    if isinstance(node, str):
        return node if node and node.isalnum() else yaml.safe_dump(node, default_style='"', width=1 << 30).strip()
    return yaml.safe_dump(node).removesuffix("\n...\n").strip()


trees = st.recursive(
    scalar | st.sampled_from(["*a", "*b", "*c"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def hostile_documents(draw: st.DrawFn) -> str:
    """A spec-like document with anchors (possibly self-referencing and multiplying), deep nesting,
    huge scalars, wrong types and repeated keys."""
    lines = ["name: t"]
    anchors: list[str] = []
    for i in range(draw(st.integers(0, 6))):
        width = draw(st.integers(1, 12))
        body = draw(st.sampled_from(["prev", "tree", "self"]))
        name = f"a{i}"
        if body == "prev" and anchors:
            value = "[" + ", ".join([f"*{anchors[-1]}"] * width) + "]"
        elif body == "self":
            value = f"[1, *{name}]" if draw(st.booleans()) else "[1]"
        else:
            value = render(draw(trees), 0, anchors)
        lines.append(f"k{i}: &{name} {value}")
        anchors.append(name)
    depth = draw(st.integers(0, 1200))
    lines.append(f"{draw(st.sampled_from(KEYS))}: " + "[" * depth + render(draw(trees), 0, anchors) + "]" * depth)
    for _ in range(draw(st.integers(0, 3))):
        lines.append(f"{draw(st.sampled_from(KEYS))}: {render(draw(trees), 0, anchors)}")
    return "\n".join(lines) + "\n"


def clean_refusal_or_plan(spec: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    started = time.monotonic()
    rc = main([str(spec), *argv, "--dry-run"])
    out = capsys.readouterr()
    assert time.monotonic() - started < 30
    assert rc in (0, 2), out.err
    if rc == 2:
        refused(rc, out.err, "")
        assert out.out == ""
    return rc, out.out, out.err


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=hostile_documents())
def test_generated_hostile_yaml_is_refused_cleanly(text: str, sandbox: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "hostile.yaml"
    spec.write_text(text)
    clean_refusal_or_plan(spec, [], capsys)


password = st.text(alphabet="abcXYZ019@:/?#%!$&*+=-_.~", min_size=0, max_size=12).map(lambda s: f"{SECRET}{s}")
placements = st.sampled_from([
    ("mlflow", "tracking_uri", "http://user:{p}@127.0.0.1:9/"),
    ("mlflow", "tracking_uri", "https://{p}@127.0.0.1:9/"),
    ("mlflow", "tracking_uri", "postgresql://user:{p}@127.0.0.1:9/db"),
    ("mlflow", "experiment", "http://user:{p}@h/x"),
    (None, "storage", "s3://key:{p}@bucket/x"),
    (None, "nme", "http://u:{p}@h"),
    ("trial", "epochs", "gs://k:{p}@b"),
])


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(secret=password, where=placements, via_set=st.booleans(), prefix=st.integers(0, 90))
def test_a_planted_secret_never_appears_in_a_refusal(secret: str, where: tuple[str | None, str, str], via_set: bool,
                                                     prefix: int, sandbox: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    section, key, template = where
    value = template.format(p=secret)
    if template.startswith("http://u"):  # a long value: any cut lands near the secret
        value = value.replace("http://u", "http://" + "u" * prefix)
    spec = tmp_path / "s.yaml"
    fields: dict[str, Any] = {}
    argv: list[str] = []
    dotted = f"{section}.{key}" if section else key
    if via_set:
        argv = ["--set", f"{dotted}={yaml.safe_dump(value, default_style=chr(34)).strip()}"]
    elif section:
        fields[section] = {key: value}
    else:
        fields[key] = value
    spec.write_text(doc(**fields))
    rc, out, err = clean_refusal_or_plan(spec, argv, capsys)
    assert rc == 2, out
    assert SECRET not in out + err, err


# --- resources the cluster never has (real local Ray) ---------------------------------------------

@pytest.mark.slow
def test_trials_asking_for_a_gpu_on_a_cpu_only_ray_are_refused_at_start(tmp_path: Path) -> None:
    """The real CLI starts its local Ray (CPU only here), then refuses before any MLflow write."""
    import os
    import subprocess
    import sys

    from tests.test_safety import _clean_up_ray

    spec = tmp_path / "gpu.yaml"
    spec.write_text(doc(resources={"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1}))
    ray_tmp = f"/tmp/rg{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp, JEPA_SWEEPS_HOME=str(tmp_path / "home"))
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "jepa_sweeps.run", str(spec)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    finally:
        _clean_up_ray(ray_tmp)
    elapsed = time.monotonic() - started
    refused(done.returncode, done.stderr, "gpus_per_worker=1: a trial needs 1 GPU, the cluster has 0")
    assert elapsed < 30, elapsed
    home = tmp_path / "home"
    assert not (home / "mlflow.db").exists() and not (home / "ray_results").exists(), sorted(home.rglob("*"))


# --- the report CLI: validated first, bounded, redacted ------------------------------------------

@pytest.fixture
def silent_server() -> Any:
    """A TCP port that accepts connections and never answers: a hung tracking server."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(("args", "expected"), [
    (["--epoch", "-5"], "--epoch -5"),
    (["--epoch", "0"], "--epoch 0"),
    (["--out", "/proc/version"], "--out /proc/version: /proc/version is not a folder"),
    (["--csv", "/proc/version"], "--csv /proc/version"),
    (["--out", "/proc/nope/report"], "cannot write in /proc"),
    (["--csv", "/proc/nope/csv"], "cannot write in /proc"),
    (["--tracking-uri", f"http://u:{SECRET}@127.0.0.1:9"], "not reachable"),
    (["--tracking-uri", f"http://u:{SECRET}@{{silent}}"], "not reachable"),
    (["--tracking-uri", f"postgresql://u:{SECRET}@127.0.0.1:9/db"], "driver is not installed"),
    (["--tracking-uri", f"http://u:{SECRET}@127.0.0.1:x"], "--tracking-uri"),
    (["--tracking-uri", "databricks"], "Databricks"),
    (["--tracking-uri", "ftp://h/x"], "unsupported scheme"),
])
def test_report_cli_refuses_before_writing(args: list[str], expected: str, sandbox: Path, silent_server: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from jepa_sweeps.report.cli import main as report

    args = [a.replace("{silent}", silent_server) for a in args]
    started = time.monotonic()
    rc = report(["nosuch", *args])
    elapsed = time.monotonic() - started
    out = capsys.readouterr()
    refused(rc, out.err, expected)
    assert SECRET not in out.err + out.out and out.out == ""
    assert elapsed <= 15, elapsed
    if "{silent}" in " ".join(args) or silent_server in " ".join(args):
        assert silent_server in out.err  # names the server


@pytest.mark.slow  # the SDK's region lookup takes ≈12 s to give up here
@pytest.mark.parametrize("fresh", [[], ["--fresh"]])
def test_a_bucket_not_reachable_with_this_environment_is_refused_with_or_without_fresh(
    fresh: list[str], sandbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    spec = tmp_path / "s3.yaml"
    spec.write_text(doc(storage="s3://jepa-no-such-bucket-4d1e/ray"))
    rc = main([str(spec), "--dry-run", *fresh])
    err = capsys.readouterr().err
    refused(rc, err, "not reachable with this environment's credentials")
    assert "earlier sweep" not in err


@pytest.fixture(scope="module")
def capacity_ray() -> Any:
    """Last in this module: the sandbox tests above check that no Ray is left running."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize(("resources", "expected"), [
    ({"workers": 4, "cpus_per_worker": 1}, "a trial needs 4.5 CPU, the cluster has 2"),
    ({"workers": 1, "cpus_per_worker": 3, "cluster_max": {"CPU": 8}}, None),  # an autoscaler can grow
    ({"workers": 1, "cpus_per_worker": 3}, "a trial needs 3.5 CPU"),
    ({"driver_resources": {"head": 0.01}}, "driver_resources.head=0.01: a trial needs 0.01 head, the cluster has 0"),
    ({"gpus_per_worker": 0.5, "cluster_max": {"GPU": 4}}, None),
    ({"workers": 1, "cpus_per_worker": 1}, None),
])
def test_cluster_capacity(resources: dict[str, Any], expected: str | None, capacity_ray: Any) -> None:
    from jepa_sweeps.config import ConfigError
    from jepa_sweeps.preflight import check_cluster
    from jepa_sweeps.spec import parse_spec

    spec = parse_spec(yaml.safe_load(doc(resources=resources)))
    if expected is None:
        check_cluster(spec.resources)
        return
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        check_cluster(spec.resources)
