"""cluster/: the deployment files agree with the project and pass Ray's own checks; the one-machine
rehearsal (``python cluster/rehearsal.py``) runs real sweeps across Ray nodes, and its state file is
handled with care.

The first part is fast and needs no network. Tests marked ``cluster`` start a rehearsal (Ray head +
one worker node + moto S3 + MLflow server) and submit sweeps with ``ray job submit``; they take
a few minutes: select them with ``-m cluster``, leave them out with ``-m "not cluster"``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from jepa_sweeps import names
from jepa_sweeps.run import parse_args
from jepa_sweeps.spec import load_spec
from tests.conftest import load_rehearsal

cluster = load_rehearsal()

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# -- what the deployment files must agree with --------------------------------------------------
def pinned_ray() -> str:
    """``2.60`` from ``ray[...]==2.60.*`` in pyproject.toml."""
    for dep in PYPROJECT["project"]["dependencies"]:
        found = re.fullmatch(r"ray\[[^\]]*\]==(\d+\.\d+)\.\*", dep.replace(" ", ""))
        if found:
            return found.group(1)
    raise AssertionError("pyproject.toml pins no ray[...]==X.Y.*")


def dockerfile_base() -> tuple[str, str]:
    """(Ray version, python tag) of the Dockerfile's base image ``rayproject/ray:<ver>-<py>``."""
    text = (CLUSTER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]*)\"?$", text, re.M))
    (image,) = re.findall(r"^FROM (\S+)", text, re.M)
    for name, value in args.items():
        image = image.replace(f"${{{name}}}", value)
    found = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-(py\d+)", image)
    assert found, f"the CPU base image {image!r} is not rayproject/ray:<version>-py<NN>"
    return found.group(1), found.group(2)


def expected_tag(gpu: bool) -> str:
    """Image tags name what is inside: ``<project version>-ray<ray version>-<python>[-gpu]``."""
    version, python = dockerfile_base()
    return f"{PYPROJECT['project']['version']}-ray{version}-{python}" + ("-gpu" if gpu else "")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_dockerfile_base_is_the_pinned_ray_and_bakes_no_secrets():
    version, python = dockerfile_base()
    assert version.startswith(pinned_ray() + "."), (version, pinned_ray())
    assert python == "py" + "".join(PYPROJECT["project"]["requires-python"].removeprefix(">=").split("."))
    text = (CLUSTER / "Dockerfile").read_text()
    assert 'ARG VARIANT=""' in text and "${VARIANT}" in text  # -gpu selects rayproject/ray:<ver>-py311-gpu
    assert re.search(r"pip install .*download\.pytorch\.org/whl/\$\{TORCH_INDEX\}.* \.", text)
    for line in re.findall(r"^(?:ENV|ARG) .*$", text, re.M):
        assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN=", line, re.I), line


# -- Ray cluster launcher ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_launcher_config_passes_ray_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(CLUSTER / f"{name}.yaml")
    prepared = prepare_config(copy.deepcopy(config))  # defaults merged, no provider calls
    validate_config(prepared)  # Ray's JSON schema and node-type consistency checks

    broken = copy.deepcopy(prepared)
    broken["available_node_types"][broken["head_node_type"]]["not_a_field"] = 1
    with pytest.raises(Exception):  # the validation is not vacuous
        validate_config(broken)

    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("trial_driver", 0) >= 1, "the head must carry the trial_driver resource"
    assert head.get("min_workers", 0) == 0
    gpu_types = [t for t in types.values() if t is not head and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "a GPU worker node type is needed"
    for t in gpu_types:
        assert 0 <= t["min_workers"] <= t["max_workers"] <= prepared["max_workers"]
        assert "trial_driver" not in t["resources"]  # drivers stay on the (non-spot) head

    docker = prepared["docker"]
    assert docker["head_image"].endswith(":" + expected_tag(gpu=False))
    assert docker["worker_image"].endswith(":" + expected_tag(gpu=True))
    options = " ".join(docker["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options
    assert re.search(r"--env MLFLOW_TRACKING_URI=https?://\S+", options)
    assert "~/.ray/auth_token" in prepared["file_mounts"]  # the same token on every node
    setup = " ".join(prepared["setup_commands"])
    assert "pip install" in setup
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start


# -- KubeRay ----------------------------------------------------------------------------------
def rayjob() -> dict[str, Any]:
    return load(CLUSTER / "kuberay" / "rayjob.yaml")


def cluster_specs() -> dict[str, dict[str, Any]]:
    return {
        "raycluster": load(CLUSTER / "kuberay" / "raycluster.yaml")["spec"],
        "rayjob": rayjob()["spec"]["rayClusterSpec"],
    }


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"]["containers"]


@pytest.mark.parametrize("which", ["raycluster", "rayjob"])
def test_kuberay_cluster_spec(which):
    doc = load(CLUSTER / "kuberay" / f"{which}.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == {"raycluster": "RayCluster", "rayjob": "RayJob"}[which]
    spec = cluster_specs()[which]
    version, _ = dockerfile_base()
    assert spec["rayVersion"] == version
    assert spec["authOptions"]["mode"] == "token"

    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    resources = json.loads(yaml.safe_load(params["resources"]))  # KubeRay's quoted JSON string
    assert resources.get("trial_driver", 0) >= 1
    assert params["dashboard-host"] == "0.0.0.0"  # the head Service must reach it; token auth guards it
    (head_container,) = containers(head["template"])
    assert head_container["image"].endswith(":" + expected_tag(gpu=False))

    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert "rayStartParams" in group and group["groupName"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        (container,) = containers(group["template"])
        gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
        assert container["image"].endswith(":" + expected_tag(gpu=gpus > 0))
    assert any(int(containers(g["template"])[0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1 for g in groups)


def test_rayjob_entrypoint_runtime_env_and_lifecycle():
    spec = rayjob()["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "jepa_sweeps.run"]
    args = parse_args(argv[3:])  # the runner's own parser accepts it
    assert args.spec.startswith("search_spaces/")
    storage = [o.split("=", 1)[1] for o in args.overrides if o.startswith("storage=")]
    assert storage and storage[0].startswith(("s3://", "gs://")), "a multi-node sweep needs shared storage"

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    uri = runtime_env["env_vars"]["MLFLOW_TRACKING_URI"]
    assert uri == mlflow_service_uri()
    assert runtime_env["working_dir"] == "/home/ray/app"  # where the image keeps search_spaces/
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0


def test_rayjob_spec_file_validates_with_its_overrides():
    args = parse_args(shlex.split(rayjob()["spec"]["entrypoint"])[3:])
    path = ROOT / args.spec
    if not path.is_file():
        pytest.skip(f"{args.spec} is not in the repository yet")
    load_spec(path, args.overrides)


# -- MLflow server recipe ---------------------------------------------------------------------
def mlflow_k8s() -> dict[str, dict[str, Any]]:
    """The MLflow server's own objects (kind → object), beside its database's."""
    docs = load_all(CLUSTER / "mlflow" / "kubernetes.yaml")
    return {d["kind"]: d for d in docs if d["metadata"]["name"] == "mlflow" and d["kind"] in ("Deployment", "Service")}


def mlflow_service_uri() -> str:
    service = mlflow_k8s()["Service"]
    port = service["spec"]["ports"][0]["port"]
    return f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{port}"


def server_flags(argv: list[str]) -> dict[str, str]:
    flags: dict[str, str] = {}
    for i, a in enumerate(argv):
        if a.startswith("--"):
            key, sep, value = a.partition("=")
            following = argv[i + 1] if i + 1 < len(argv) else "--"
            flags[key] = value if sep else ("" if following.startswith("--") else following)
    return flags


def test_mlflow_kubernetes_server():
    from mlflow.server.security_utils import is_allowed_host_header

    deployment = mlflow_k8s()["Deployment"]
    (container,) = containers(deployment["spec"]["template"])
    flags = server_flags(container["args"])
    assert flags["--backend-store-uri"].startswith("postgresql://")
    assert flags["--artifacts-destination"].startswith("s3://")
    assert flags["--host"] == "0.0.0.0"  # inside the pod network; the ClusterIP Service is the only way in
    allowed = flags["--allowed-hosts"].split(",")
    host = mlflow_service_uri().split("//", 1)[1]  # the Host header RayJob's MLflow client sends
    assert is_allowed_host_header(allowed, host)
    assert not is_allowed_host_header(allowed, "evil.example.com")
    for var in container.get("env", []):  # credentials only from Secrets
        if re.search(r"PASSWORD|SECRET|KEY", var["name"]):
            assert "secretKeyRef" in var.get("valueFrom", {}), var
    assert mlflow_k8s()["Service"]["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_mlflow_compose_server():
    compose = load(CLUSTER / "mlflow" / "docker-compose.yaml")
    mlflow = compose["services"]["mlflow"]
    command = mlflow["command"] if isinstance(mlflow["command"], list) else shlex.split(mlflow["command"])
    flags = server_flags(command)
    assert flags["--backend-store-uri"].startswith("postgresql://")
    assert flags["--artifacts-destination"].startswith("s3://")
    assert flags["--host"] == "0.0.0.0" and "--allowed-hosts" in flags
    assert all(p.startswith("127.0.0.1:") for p in mlflow["ports"]), "publish on the host's loopback only"
    text = (CLUSTER / "mlflow" / "docker-compose.yaml").read_text()
    credentials = re.findall(r"^\s*-?\s*\w*(?:PASSWORD|SECRET_ACCESS_KEY|ROOT_USER)\s*[:=]\s*(\S+)", text, re.M)
    assert credentials
    for value in credentials:
        assert value.startswith("${"), f"credential {value!r} must come from the environment (.env), not the file"
    assert "${POSTGRES_PASSWORD}@" in flags["--backend-store-uri"]


# -- the rehearsal's process bookkeeping (fast) ---------------------------------------------------
def test_stop_ends_exactly_the_marked_sessions(tmp_path):
    r = cluster.Rehearsal(str(tmp_path), uuid.uuid4().hex[:8], str(tmp_path), str(tmp_path / "t"), 0, 0, 0, 0, 0)
    launch = cluster.Launcher(r)
    # A child that loses the marker (exec with an empty environment) still shares the session.
    launch.spawn("svc", ["sh", "-c", "env -i sleep 300 & exec sleep 300"])
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(cluster.processes(r.id)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(cluster.processes(r.id).values()) == ["svc", "svc"]
        cluster.stop(r, grace_s=2)
        assert cluster.processes(r.id) == {}
        assert bystander.poll() is None
        cluster.stop(r)  # nothing left: fine
    finally:
        bystander.kill()
        bystander.wait()


# -- the rehearsal's state file (fast) ------------------------------------------------------------
REHEARSAL = ROOT / "cluster" / "rehearsal.py"


def fake_state(directory: Path, **changes: Any) -> dict[str, Any]:
    """The state ``up`` writes for ``directory`` (nothing running), with ``changes``."""
    directory = directory.resolve()
    r = cluster.Rehearsal(str(directory), uuid.uuid4().hex[:8], str(directory / "ray"),
                          str(directory / cluster.TOKEN_FILE), 1, 2, 3, 4, 1, ["s3", "mlflow", "head", "worker1"])
    state = {**r.__dict__, **changes}
    (directory / cluster.TOKEN_FILE).write_text("token")
    (directory / cluster.REHEARSAL_STATE_FILE).write_text(json.dumps(state))
    return state


def rehearsal_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REHEARSAL), *args], capture_output=True, text=True, timeout=60)


def test_down_deletes_only_what_up_wrote(tmp_path: Path) -> None:
    fake_state(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "head.log").write_text("kept")
    done = rehearsal_cli("down", "--dir", str(tmp_path))
    assert done.returncode == 0 and "stopped the rehearsal" in done.stdout, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    assert rehearsal_cli("down", "--dir", str(tmp_path)).returncode == 0  # nothing there: fine


@pytest.mark.parametrize("text", ["{", "[]", "null", '{"id": 1}', "\xff\xfe", ""])
def test_a_malformed_state_file_is_one_line_and_exit_2(tmp_path: Path, text: str) -> None:
    (tmp_path / cluster.REHEARSAL_STATE_FILE).write_bytes(text.encode("latin-1"))
    for command in ("down", "status", "up"):
        done = rehearsal_cli(command, "--dir", str(tmp_path))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    assert (tmp_path / cluster.REHEARSAL_STATE_FILE).read_bytes() == text.encode("latin-1")


@pytest.mark.parametrize("key", ["token_file", "dir", "ray_temp"])
def test_down_refuses_paths_up_did_not_make(tmp_path: Path, key: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    folder = tmp_path / "rehearsal"
    folder.mkdir()
    fake_state(folder, **{key: str(victim)})
    done = rehearsal_cli("down", "--dir", str(folder))
    assert done.returncode == 2 and key in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert victim.read_text() == "precious"
    assert (folder / cluster.REHEARSAL_STATE_FILE).is_file() and (folder / cluster.TOKEN_FILE).is_file()


@pytest.mark.parametrize("changes", [{"id": "../../x"}, {"components": ["head; rm -rf /"]}, {"gcs_port": True},
                                     {"extra": 1}])
def test_down_refuses_other_hand_edits(tmp_path: Path, changes: dict[str, Any]) -> None:
    fake_state(tmp_path, **changes)
    done = rehearsal_cli("down", "--dir", str(tmp_path))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert (tmp_path / cluster.REHEARSAL_STATE_FILE).is_file()


# -- the rehearsal: a multi-node cluster on this machine ------------------------------------------
RAY_CLI = Path(sys.executable).parent / "ray"
HEAD_CPUS, WORKER_CPUS = 2, 1


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    if not RAY_CLI.exists() or not sys.platform.startswith("linux"):
        pytest.skip("needs the ray CLI beside this Python, on Linux")
    pytest.importorskip("moto.server", reason="needs moto[server] for the object store")
    directory = tmp_path_factory.mktemp("rehearsal")
    try:
        r = cluster.up(directory, workers=1, head_cpus=HEAD_CPUS, worker_cpus=WORKER_CPUS)
    except RuntimeError:
        cluster.down(directory)
        raise
    try:
        yield r
    finally:
        cluster.down(directory)
        assert cluster.processes(r.id) == {}
        if not r.ray_temp.startswith(str(directory)):
            shutil.rmtree(r.ray_temp, ignore_errors=True)


def client_env(r: cluster.Rehearsal) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **r.client_env(), "PATH": f"{RAY_CLI.parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def ray_cli(r: cluster.Rehearsal, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY_CLI), *args], env=client_env(r), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def submit(r: cluster.Rehearsal, submission_id: str, *overrides: str, wait: bool, timeout: float = 600) -> str:
    """``ray job submit`` exactly as printed by ``up`` (plus overrides); returns its output."""
    argv = r.submit_argv("search_spaces/smoke.yaml", *overrides)
    argv[3:3] = ["--submission-id", submission_id, *([] if wait else ["--no-wait"])]
    done = ray_cli(r, *argv[1:], timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"ray job submit failed ({done.returncode}):\n{output[-6000:]}"
    return output


def dashboard(r: cluster.Rehearsal, path: str) -> Any:
    token = Path(r.token_file).read_text()
    request = urllib.request.Request(r.dashboard_url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def job(r: cluster.Rehearsal, submission_id: str) -> dict[str, Any]:
    return dashboard(r, f"/api/jobs/{submission_id}")


def wait_job(r: cluster.Rehearsal, submission_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job(r, submission_id)
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return info
        time.sleep(2)
    raise AssertionError(f"job {submission_id} still {info['status']} after {timeout:.0f} s")


def state(r: cluster.Rehearsal, kind: str, *filters: str) -> list[dict[str, Any]]:
    """Ray's state API (``ray list ...``), as JSON."""
    args = ["list", kind, "--address", r.dashboard_url, "--detail", "--format", "json", "--limit", "10000"]
    done = ray_cli(r, *args, *[a for f in filters for a in ("--filter", f)])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def node_names(r: cluster.Rehearsal) -> dict[str, str]:
    """node id → ``head`` / ``worker<i>`` (from the ``node<i>`` resources ``up`` gives worker nodes)."""
    node_of = {}
    for node in state(r, "nodes"):
        custom = [k for k in node["resources_total"] if re.fullmatch(r"node\d+", k)]
        node_of[node["node_id"]] = "head" if node["is_head_node"] else f"worker{custom[0].removeprefix('node')}"
    return node_of


def train_workers(r: cluster.Rehearsal, job_id: str) -> list[dict[str, Any]]:
    return [a for a in state(r, "actors", "class_name=RayTrainWorker") if a["job_id"] == job_id]


def s3_keys(r: cluster.Rehearsal, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=r.s3_endpoint, aws_access_key_id=cluster.AWS_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=cluster.AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                          region_name=cluster.AWS_ENV["AWS_DEFAULT_REGION"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=cluster.BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def checkpoints(keys: list[str]) -> dict[str, set[str]]:
    """Train run → its checkpoint folders holding the encoder and the training state."""
    found: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 3 and parts[-2].startswith("checkpoint_") and parts[-1] == "encoder.pt":
            if f"{'/'.join(parts[:-1])}/state.pt" in keys:
                found.setdefault(parts[-3], set()).add(parts[-2])
    return found


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.cluster
def test_sweep_runs_across_nodes_with_s3_checkpoints_and_mlflow_server(rehearsal):
    r = rehearsal
    sid = f"smoke-{uuid.uuid4().hex[:6]}"
    # 2 workers of 1 CPU: the head (2 CPUs, 0.5 taken by the trial driver) holds only one, so every
    # trial's worker group spans both nodes.
    overrides = ["resources.workers=2", "resources.cpus_per_worker=1", "resources.driver_cpus=0.5"]
    output = submit(r, sid, *overrides, wait=True)
    info = job(r, sid)
    assert info["status"] == "SUCCEEDED", output[-6000:]
    spec = load_spec(ROOT / "search_spaces/smoke.yaml", overrides)
    trials = spec.num_samples * spec.seeds

    # Ray's state: each trial's worker group (one placement group) had workers on both nodes.
    node_of = node_names(r)
    groups: dict[str, set[str]] = {}
    for actor in train_workers(r, info["job_id"]):
        groups.setdefault(actor["placement_group_id"], set()).add(node_of[actor["node_id"]])
    assert len(groups) == trials and all(g == {"head", "worker1"} for g in groups.values()), groups
    drivers = [a for a in state(r, "actors", "class_name=ImplicitFunc") if a["job_id"] == info["job_id"]]
    assert drivers and {node_of[a["node_id"]] for a in drivers} == {"head"}  # pinned by trial_driver

    # The object store holds every trial's checkpoints (Train runs are named after the trial).
    keys = s3_keys(r, f"sweeps/{spec.name}/train/")
    runs = checkpoints(keys)
    assert len(runs) == trials and all(runs.values()), keys

    # MLflow server: parent run + one finished child per trial, metrics per epoch, artifacts in S3.
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(r.tracking_uri)
    experiment = client.get_experiment_by_name(spec.mlflow.experiment or spec.name)
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [x for x in found if x.data.tags.get(names.ROLE_TAG) == names.SWEEP_ROLE]
    children = [x for x in found if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == trials
    epochs = spec.trial_for({}).epochs
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags[names.TRIAL_TAG] in {k.removeprefix("train-") for k in runs}
        history = client.get_metric_history(child.info.run_id, "knn_acc")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        local = download_artifacts(run_id=child.info.run_id, artifact_path=names.CONFIG_ARTIFACT,
                                   tracking_uri=r.tracking_uri)
        assert json.loads(Path(local).read_text())["epochs"] == epochs
    best = client.get_run(parent.data.tags[names.BEST_RUN_TAG])
    assert [a.path for a in client.list_artifacts(best.info.run_id, "best_encoder")] == ["best_encoder/encoder.pt"]
    stored = s3_keys(r, f"mlflow/{experiment.experiment_id}/")
    assert any(k.endswith(f"{best.info.run_id}/artifacts/best_encoder/encoder.pt") for k in stored), stored


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.cluster
def test_trial_resumes_on_the_head_after_its_worker_node_dies(rehearsal):
    """Runs last (file order): it takes the rehearsal's worker node down for good."""
    r = rehearsal
    sid = f"failover-{uuid.uuid4().hex[:6]}"
    name = f"failover-{uuid.uuid4().hex[:6]}"
    # Keep the head busy while the trial starts, so its workers are placed on the worker node; it
    # is released before the node dies, so the restarted workers fit on the head.
    hold = f"hold-{uuid.uuid4().hex[:6]}"
    epochs, driver_cpus = 6, 0.5
    overrides = [f"name={name}", "num_samples=1", "optuna.n_startup_trials=0", f"epochs={epochs}",
                 f"resources.driver_cpus={driver_cpus}", "resources.workers=2",
                 f"resources.cpus_per_worker={WORKER_CPUS / 2}"]  # both workers fit on the worker node
    busy = HEAD_CPUS - driver_cpus
    done = ray_cli(r, "job", "submit", "--address", r.dashboard_url, "--submission-id", hold, "--no-wait",
                   "--entrypoint-num-cpus", str(busy), "--entrypoint-resources", json.dumps({"trial_driver": 1}),
                   "--", "python", "-c", "import time; time.sleep(900)")
    assert done.returncode == 0, done.stderr[-3000:]
    deadline = time.monotonic() + 60
    while job(r, hold)["status"] != "RUNNING":
        assert time.monotonic() < deadline, job(r, hold)
        time.sleep(1)

    submit(r, sid, *overrides, wait=False)
    deadline = time.monotonic() + 300
    while not checkpoints(s3_keys(r, f"sweeps/{name}/train/")):
        info = job(r, sid)
        assert info["status"] in ("PENDING", "RUNNING") and time.monotonic() < deadline, info
        time.sleep(0.5)
    node_of = node_names(r)  # before the node is gone
    cluster.stop(r, ["worker1"], grace_s=0)  # the node is lost: SIGKILL its raylet and workers
    assert ray_cli(r, "job", "stop", "--address", r.dashboard_url, hold).returncode == 0
    info = wait_job(r, sid, timeout=420)
    assert info["status"] == "SUCCEEDED", ray_cli(r, "job", "logs", "--address", r.dashboard_url, sid).stdout[-6000:]

    # Ray's view: the trial's first workers ran (and died) on the worker node, the restarted ones on the head.
    workers = train_workers(r, info["job_id"])
    assert {node_of[a["node_id"]] for a in workers} == {"head", "worker1"}, workers
    (run,) = [t for t in dashboard(r, "/api/train/v2/runs/v1")["train_runs"] if t["job_id"] == info["job_id"]]
    assert run["status"] == "FINISHED" and len(run["attempts"]) >= 2, run
    first, last = run["attempts"][0], run["attempts"][-1]
    assert {node_of[w["node_id"]] for w in first["workers"]} == {"worker1"}, first
    assert {node_of[w["node_id"]] for w in last["workers"]} == {"head"}, last

    # Resumed, not restarted: every epoch reached MLflow once, and the trial finished.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(r.tracking_uri)
    experiment = client.get_experiment_by_name(name)
    (child,) = [x for x in client.search_runs([experiment.experiment_id]) if names.TRIAL_TAG in x.data.tags]
    assert child.info.status == "FINISHED" and child.data.tags[names.STATUS_TAG] == names.FINISHED
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "knn_acc"))
    assert steps == list(range(1, epochs + 1)), steps
    assert len(checkpoints(s3_keys(r, f"sweeps/{name}/train/"))) == 1
