"""Safe defaults, each checked: servers bind 127.0.0.1, Ray token authentication stays on, YAML is only
safe-loaded, pickles the product reads cannot run code, names cannot leave the storage folder, and
neither environment variables nor credentials reach MLflow or the console.

Static checks scan the package's source (AST where the question is about calls); behavioural ones
start the real thing: the runner's local Ray with its default authentication, and a one-trial sweep
whose environment and tracking URI hold secrets, against an ``mlflow server``.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from jepa_sweeps.config import ConfigError, TrialConfig
from jepa_sweeps.data.base import DataError
from jepa_sweeps.data.datasets import load_dataset
from jepa_sweeps.spec import parse_spec
from jepa_sweeps.storage import TRAIN_FOLDER, locate, safe_name
from jepa_sweeps.sweep import ui_hint
from jepa_sweeps.tracking import run_name
from jepa_sweeps.train import STATE_FILE, LocalHooks, load_checkpoint
from tests.fake_datasets import write_cifar10
from tests.conftest import MlflowServer, kill_matching, load_rehearsal

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jepa_sweeps"
SOURCES = sorted(PACKAGE.rglob("*.py")) + [ROOT / "cluster" / "rehearsal.py"]  # the rehearsal starts servers too


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def calls(attribute: str, module: str) -> Iterator[tuple[Path, ast.Call]]:
    """Every call ``module.attribute(...)`` in the package."""
    for path in SOURCES:
        for node in ast.walk(parsed(path)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == module):
                yield path, node


def _clean_up_ray(temp_dir: str) -> None:
    """Stop what a Ray given ``RAY_TMPDIR=temp_dir`` (unique to this test) left running, and remove it."""
    kill_matching(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)


# --- servers bind 127.0.0.1 --------------------------------------------------------------------------

def test_servers_the_product_starts_bind_localhost() -> None:
    """The local Ray's dashboard (an HTTP API that runs jobs) is asked for 127.0.0.1 explicitly;
    nothing in the package binds all interfaces; the rehearsal cluster binds 127.0.0.1; the printed
    and documented ``mlflow ui`` commands (no authentication) bind 127.0.0.1."""
    (init,) = [c for path, c in calls("init", "ray") if path.name == "run.py" and any(
        k.arg == "address" and isinstance(k.value, ast.Constant) and k.value.value == "local" for k in c.keywords)]
    hosts = [k.value.value for k in init.keywords if k.arg == "dashboard_host"]
    assert hosts == ["127.0.0.1"]
    for path in SOURCES:
        text = path.read_text()
        assert "0.0.0.0" not in text and "'::'" not in text and '"::"' not in text, path
    assert load_rehearsal().HOST == "127.0.0.1"
    assert "--host 127.0.0.1" in ui_hint("sqlite:////tmp/x/mlflow.db")
    readme = (ROOT / "README.md").read_text().splitlines()
    documented = [line for line in readme if "mlflow ui" in line and "--" in line]
    assert documented and all("--host 127.0.0.1" in line for line in documented), documented


# --- Ray token authentication ------------------------------------------------------------------------

def test_the_product_never_disables_ray_token_authentication() -> None:
    """Only tests opt out (``RAY_AUTH_MODE=disabled``); the package only ever asks for ``token``."""
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(r"RAY_AUTH_MODE.{0,40}disabled", text, re.S), path
        for value in re.findall(r"RAY_AUTH_MODE['\"]?\s*[:=]\s*['\"]?(\w+)", text):
            assert value == "token", (path, value)
        assert "AUTH_MODE" not in text.replace("RAY_AUTH_MODE", ""), path  # no _system_config route


PROBE = """
import json, os, urllib.error, urllib.request
from pathlib import Path
import ray
from jepa_sweeps.run import init_ray
from jepa_sweeps.storage import Locations

init_ray(Locations("/tmp/unused", "sqlite:////tmp/unused.db", "unused", "unused"))
url = ray._private.worker.get_dashboard_url()

def status(headers):
    try:
        request = urllib.request.Request(f"http://{url}/api/jobs/", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code

token = (Path.home() / ".ray" / "auth_token").read_text().strip()
print(json.dumps({"url": url, "mode": os.environ.get("RAY_AUTH_MODE"), "anonymous": status({}),
                  "token": status({"Authorization": f"Bearer {token}"})}))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.ray
def test_local_ray_dashboard_is_local_and_refuses_clients_without_the_token(tmp_path: Path) -> None:
    """The runner's own ``init_ray`` with the environment a user has (no ``RAY_AUTH_MODE``; a fresh
    home, so the token Ray generates lands in tmp): the dashboard listens on 127.0.0.1 and its job
    API answers 401 without the token and 200 with it."""
    ray_tmp = f"/tmp/rs{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(HOME=str(tmp_path), RAY_TMPDIR=ray_tmp)
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
    finally:
        _clean_up_ray(ray_tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["url"].startswith("127.0.0.1:"), seen
    assert seen["mode"] == "token" and seen["anonymous"] == 401 and seen["token"] == 200, seen


# --- YAML and pickles ----------------------------------------------------------------------------------

SAFE_YAML = {"safe_load", "safe_load_all", "safe_dump", "safe_dump_all", "YAMLError", "SafeDumper", "SafeLoader"}


def test_yaml_is_only_safe_loaded() -> None:
    """Outside ``yaml_input`` (the bounded loader, built on ``SafeLoader``) only the safe functions
    are used; nowhere is a loader that can build Python objects named."""
    from jepa_sweeps import yaml_input

    unsafe = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all", "Loader",
              "FullLoader", "UnsafeLoader", "CLoader", "CFullLoader", "CUnsafeLoader"}
    for path in SOURCES:
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml":
                assert node.attr not in unsafe, f"{path.name}:{node.lineno}: yaml.{node.attr}"
                assert path.name == "yaml_input.py" or node.attr in SAFE_YAML, f"{path.name}:{node.lineno}: yaml.{node.attr}"
            if isinstance(node, ast.ImportFrom) and node.module == "yaml":
                assert {a.name for a in node.names} <= SAFE_YAML, f"{path.name}:{node.lineno}"
    assert issubclass(yaml_input.BoundedLoader, yaml.SafeLoader)
    with pytest.raises(ConfigError, match="YAML"):
        yaml_input.loads("a: !!python/object/apply:os.system ['true']", "t")


def test_torch_load_always_has_weights_only() -> None:
    found = list(calls("load", "torch"))
    assert found
    for path, call in found:
        flags = [k.value for k in call.keywords if k.arg == "weights_only"]
        assert len(flags) == 1 and isinstance(flags[0], ast.Constant) and flags[0].value is True, (
            f"{path.name}:{call.lineno}")


class Payload:
    """Unpickling this creates ``marker``: stands for any code a crafted pickle could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return Path.touch, (self.marker,)


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    torch.save({"model": {}, "epoch": 1, "metrics": {}, "payload": Payload(marker)}, tmp_path / STATE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        LocalHooks(directory=tmp_path).load_checkpoint()
    assert not marker.exists()
    torch.load(tmp_path / STATE_FILE, weights_only=False)  # the payload is real: it runs when allowed
    assert marker.exists()


def test_a_dataset_pickle_holding_an_object_is_refused(tmp_path: Path) -> None:
    """CIFAR folders are pickles too: the loader rebuilds numpy arrays and nothing else."""
    folder = write_cifar10(tmp_path / "cifar")
    marker = tmp_path / "code_ran"
    (batch,) = [p for p in folder.rglob("data_batch_1")]
    batch.write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}))
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", str(folder), None)
    assert not marker.exists()


# --- names ---------------------------------------------------------------------------------------------

ESCAPES = ["../escape", "a/b", "..", ".", "a\\b", "/abs", "a\0b", ""]


@pytest.mark.parametrize("name", [*ESCAPES, ".hidden", "~user", "-rf"])
def test_sweep_names_that_are_not_plain_folder_names_are_refused(name: str) -> None:
    """``name`` names the storage folders: letters, digits, '_', '.', '-', starting with a letter or digit."""
    with pytest.raises(ConfigError):
        parse_spec({"name": name})


@pytest.mark.parametrize("name", ESCAPES)
def test_experiment_names_that_could_leave_the_artifact_folder_are_refused(name: str) -> None:
    """``mlflow.experiment`` names one artifact folder of a local store (MLflow allows most names)."""
    with pytest.raises(ConfigError):
        parse_spec({"name": "ok", "mlflow": {"experiment": name}})


@settings(max_examples=200, deadline=None, database=None)
@given(name=st.text(alphabet="ab./\\~-_ \0", max_size=8), experiment=st.text(alphabet="ab./\\~-_ \0", max_size=8))
def test_every_path_built_from_accepted_names_stays_in_its_folder(name: str, experiment: str) -> None:
    try:
        spec = parse_spec({
            "name": name or "x", "storage": "/srv/storage",
            "mlflow": {"experiment": experiment or "x", "tracking_uri": "sqlite:////srv/store/mlflow.db"},
        })
    except ConfigError:
        return
    loc = locate(spec)
    root = Path("/srv/storage")
    assert Path(os.path.normpath(loc.folder)).parent == root, loc.folder
    for built in (loc.tune_path, loc.train_path, loc.state_path):
        assert Path(os.path.normpath(built)).parent == Path(os.path.normpath(loc.folder)), built
    artifacts = Path(os.path.normpath("/" + loc.artifact_root.removeprefix("file://").lstrip("/")))
    assert artifacts.parent == Path("/srv/store/mlartifacts"), artifacts
    assert "/" not in safe_name(loc.experiment) and safe_name(loc.experiment) not in (".", "..")


@settings(max_examples=200, deadline=None, database=None)
@given(objective=st.sampled_from(["sigreg", "vicreg", "infonce", "ema"]), lam=st.floats(0, 1),
       n_global=st.integers(1, 4), n_local=st.integers(0, 8), batch=st.integers(1, 64), seed=st.integers(0, 2**31 - 1))
def test_run_names_are_plain_file_names(objective: str, lam: float, n_global: int, n_local: int, batch: int,
                                        seed: int) -> None:
    """Run names are built from config values; they must never hold a separator or a dot-name."""
    assume(objective != "infonce" or n_global + n_local >= 2)
    params = {"name": objective} if objective == "ema" else {"name": objective, "lam": lam}
    cfg = TrialConfig.model_validate({"objective": params, "views": {"n_global": n_global, "n_local": n_local},
                                      "optim": {"batch_size": 2 * batch}, "seed": seed})
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", run_name(cfg)), run_name(cfg)


# --- secrets -------------------------------------------------------------------------------------------

SECRET, PASSWORD = "SECRET123xyz", "PASSWORD456xyz"


@pytest.mark.slow
@pytest.mark.ray
def test_environment_and_credentials_never_reach_mlflow_or_the_console(tmp_path: Path) -> None:
    """A one-trial sweep through the CLI with a secret in the environment and a password in the
    tracking URI: no param, tag, metric name or artifact of any run, no line it prints, and no file
    it leaves (Tune's tuner.pkl and experiment state, Train's checkpoints and state, Ray's session
    logs) holds either. The plan shows the URI as ``***@``; Tune is handed it without credentials."""
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    ray_tmp = f"/tmp/rt{os.getpid()}"
    spec = tmp_path.parent / f"{tmp_path.name}-secrets.yaml"  # outside the scanned folder
    try:
        server.wait_healthy()
        uri = f"http://jepa:{PASSWORD}@127.0.0.1:{server.port}"
        spec.write_text(yaml.safe_dump({
            "name": "secrets",
            "trial": {"epochs": 1, "optim": {"batch_size": 64}, "views": {"n_global": 2, "n_local": 0},
                      "eval": {"final_probe_epochs": 0}},
            "num_samples": 1,
            "scheduler": {"name": "fifo"},
            "resources": {"workers": 1, "cpus_per_worker": 1},
            "mlflow": {"tracking_uri": uri},
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        env.update(AWS_SECRET_ACCESS_KEY=SECRET, JEPA_SWEEPS_TOKEN=SECRET, RAY_AUTH_MODE="disabled",
                   RAY_TMPDIR=ray_tmp, JEPA_SWEEPS_HOME=str(tmp_path / "home"))
        done = subprocess.run([sys.executable, "-m", "jepa_sweeps.run", str(spec)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "***@127.0.0.1" in done.stdout
        for secret in (SECRET, PASSWORD):
            assert secret not in done.stdout and secret not in done.stderr

        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
        assert len(runs) == 2  # the sweep and its trial
        texts: list[str] = []
        for run in runs:
            texts += [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()]
            texts += list(run.data.metrics)
            local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts" / run.info.run_id)))
            texts += [f.read_bytes().decode("latin-1") for f in local.rglob("*") if f.is_file()]
        assert any(f"tracking_uri: http://127.0.0.1:{server.port}" in t for t in texts)  # the spec artifact
        for secret in (SECRET, PASSWORD):
            assert not [t[:200] for t in texts if secret in t], secret
        stored = [f for f in (tmp_path / "home").rglob("*") if f.is_file()]
        assert any(f.name == "tuner.pkl" for f in stored) and any(f.name.startswith("experiment_state") for f in stored)
        assert any(f"/{TRAIN_FOLDER}/" in str(f) for f in stored)  # Train's checkpoints and state
        scanned = [*tmp_path.rglob("*"), *Path(ray_tmp).rglob("*")]
        leaks = [str(f) for f in scanned if f.is_file() and PASSWORD.encode() in f.read_bytes()]
        leaks += [str(f) for f in stored if SECRET.encode() in f.read_bytes()]
        assert not leaks, leaks
    finally:
        spec.unlink(missing_ok=True)
        _clean_up_ray(ray_tmp)
        server.stop()
