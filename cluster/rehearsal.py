"""``python cluster/rehearsal.py up|down|status [--dir DIR]``: a multi-node cluster rehearsed on one machine.

``up`` starts what a real deployment has (cluster/README.md), all on 127.0.0.1: a Ray head plus N
Ray worker nodes (each its own raylet, CPUs and a ``node<i>`` resource; the head carries the
``trial_driver`` resource that pins trial drivers, as on a cloud head node), token authentication
on, an S3-compatible object store (moto's server mode: offline, in memory) with a bucket, and an
``mlflow server`` with an SQLite backend whose artifacts go to that bucket. It prints the
``ray job submit`` line and the client environment and records pids, ports and URLs in
``DIR/state.json`` (default ``$JEPA_SWEEPS_HOME/rehearsal``).

``down`` stops exactly what ``up`` started: every process it launches carries an environment
marker naming this rehearsal and its component, inherited by all descendants (GCS, raylets, Ray
workers, job drivers), and starts a session that its descendants share; nothing else on the
machine is touched. Plain ``ray stop`` would stop every Ray of this user, which is why it is not
used. ``down`` deletes only the files ``up`` wrote in DIR (the token and the state file), and
refuses a state file whose paths are not the ones ``up`` writes (edited by hand); a malformed
state file is a one-line error with exit status 2. Linux only (reads ``/proc``).

Not built on ``ray.cluster_utils.Cluster`` or moto's ``ThreadedMotoServer``: both keep what they
start tied to the Python process that started it (an exit hook, a thread), while ``up`` returns
and the rehearsal must outlive it; ``Cluster`` also writes the machine-wide "current cluster"
address that ``ray.init(address="auto")`` of every user here would then find. So the parts run
as a deployment runs them: ``ray start`` with token authentication, ``python -m moto.server``
and ``mlflow server``.

A development tool, not part of the installed package: it needs ``moto[server]`` (the test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jepa_sweeps.cli import EXIT_USAGE  # as the product's CLIs: bad input (here a state file), nothing done

REHEARSAL_STATE_FILE = "state.json"
TOKEN_FILE = "auth_token"
MARKER = "JEPA_SWEEPS_REHEARSAL"
HOST = "127.0.0.1"
BUCKET = "jepa-rehearsal"
# moto accepts any credentials; these are not secrets.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance metadata lookups (offline)
}
OBJECT_STORE_BYTES = 512 * 1024**2  # per node; Ray's default (30% of RAM) is far more than a rehearsal needs
# Unix socket paths (Ray's temp dir + ~70 characters) must stay below 108 characters.
MAX_RAY_TEMP_LEN = 36
START_TIMEOUT_S = 120.0


class StateError(Exception):
    """A state file ``up`` did not write as it is; ``str`` is one line."""


def default_dir() -> Path:
    """``$JEPA_SWEEPS_HOME/rehearsal`` (the home of ``jepa_sweeps.home.home``, without importing the package)."""
    return Path(os.environ.get("JEPA_SWEEPS_HOME", "~/.jepa_sweeps")).expanduser().resolve() / "rehearsal"


@dataclass
class Rehearsal:
    """What ``up`` started: enough for ``down``, ``status`` and clients (the state file)."""

    dir: str
    id: str
    ray_temp: str
    token_file: str
    gcs_port: int
    dashboard_port: int
    s3_port: int
    mlflow_port: int
    workers: int
    components: list[str] = field(default_factory=list)

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def storage(self) -> str:
        return f"s3://{BUCKET}/sweeps"

    def client_env(self) -> dict[str, str]:
        """What a client (``ray job submit``, boto3, pyarrow, MLflow) needs to reach this rehearsal."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_file,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,  # honoured by boto3 and by pyarrow's S3 filesystem
            **AWS_ENV,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
        }

    def submit_argv(self, spec: str = "search_spaces/smoke.yaml", *overrides: str) -> list[str]:
        """``ray job submit`` of a sweep; run from the project root (``--working-dir .`` ships the specs)."""
        sets = [
            f"storage={self.storage}",
            f"mlflow.tracking_uri={self.tracking_uri}",
            "resources.driver_resources={trial_driver: 1}",
            *overrides,
        ]
        return [
            "ray", "job", "submit", "--address", self.dashboard_url, "--working-dir", ".", "--",
            "python", "-m", "jepa_sweeps.run", spec, *[a for s in sets for a in ("--set", s)],
        ]

    def submit_line(self) -> str:
        auth = f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={shlex.quote(self.token_file)}"
        return f"{auth} {shlex.join(self.submit_argv())}"

    def save(self) -> None:
        Path(self.dir, REHEARSAL_STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> Rehearsal | None:
        """The rehearsal recorded in ``directory``, None if there is none; ``StateError`` for a state
        file that is not JSON, lacks or adds fields, or names paths ``up`` does not write there."""
        directory = directory.resolve()
        path = directory / REHEARSAL_STATE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise StateError(f"{path}: not a state file `up` wrote ({str(err).splitlines()[0][:120]})") from None
        return cls.checked(data, directory, path)

    @classmethod
    def checked(cls, data: object, directory: Path, path: Path) -> Rehearsal:
        def refuse(problem: str) -> StateError:
            return StateError(f"{path}: {problem}; not touching anything (fix or delete the file)")

        if not isinstance(data, dict):
            raise refuse(f"expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f.type for f in cls.__dataclass_fields__.values()}
        if set(data) != set(fields):
            missing, unknown = sorted(set(fields) - set(data)), sorted(set(data) - set(fields))
            raise refuse(f"missing {missing}, unknown {unknown}"[:200])
        for key, kind in fields.items():
            value = data[key]
            ok = {"str": isinstance(value, str), "int": type(value) is int and 0 <= value < 65536,
                  "list[str]": isinstance(value, list) and all(isinstance(c, str) for c in value)}[kind]
            if not ok:
                raise refuse(f"{key}={value!r:.60}: expected {kind}")
        if not re.fullmatch(r"[0-9a-f]{8}", data["id"]):
            raise refuse(f"id={data['id']!r:.60}: not an id `up` makes")
        if not all(re.fullmatch(r"s3|mlflow|head|worker\d{1,3}", c) for c in data["components"]):
            raise refuse(f"components={data['components']!r:.80}: unknown component")
        # Only what ``up`` itself creates for this folder: ``down`` deletes the token file.
        expected = {
            "dir": {str(directory)},
            "token_file": {str(directory / TOKEN_FILE)},
            "ray_temp": {str(directory / "ray"), f"/tmp/jepa-ray-{data['id']}"},
        }
        for key, allowed in expected.items():
            if data[key] not in allowed:
                raise refuse(f"{key}={data[key]!r:.80} is not a path `up` makes for this folder")
        return cls(**data)

    def marker(self, component: str) -> str:
        return f"{self.id}:{component}"


# -- processes ---------------------------------------------------------------------------------
Process = tuple[int, int]  # (pid, start time in clock ticks since boot): a pid cannot be confused when reused


def processes(rehearsal_id: str) -> dict[Process, str]:
    """Live (non-zombie) processes of this rehearsal → their component.

    A process is ours when its environment carries the marker, or when it shares a session with
    one that does: Ray renames its workers and agents (setproctitle), which overwrites what
    ``/proc/PID/environ`` shows, but they stay in the session of the daemon that started them."""
    needle = f"{MARKER}={rehearsal_id}:".encode()
    table: dict[Process, int] = {}
    marked: dict[Process, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
            fields = stat[stat.rindex(b")") + 2 :].split()
            if fields[0] == b"Z":
                continue
            key = (int(entry.name), int(fields[19]))
            table[key] = int(fields[3])  # session id
            for var in Path(entry.path, "environ").read_bytes().split(b"\0"):
                if var.startswith(needle):
                    marked[key] = var[len(needle) :].decode()
                    break
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile, or not ours to read
    sessions = {table[key]: component for key, component in marked.items() if key in table}
    return {key: marked.get(key) or sessions[sid] for key, sid in table.items() if key in marked or sid in sessions}


def alive(process: Process) -> bool:
    try:
        stat = Path(f"/proc/{process[0]}/stat").read_bytes()
        fields = stat[stat.rindex(b")") + 2 :].split()
        return fields[0] != b"Z" and int(fields[19]) == process[1]
    except (OSError, ValueError, IndexError):
        return False


def stop(rehearsal: Rehearsal, components: list[str] | None = None, grace_s: float = 5.0) -> None:
    """SIGTERM the components' processes, SIGKILL what is left after ``grace_s``; dead ones are fine.

    ``grace_s=0`` kills at once, as a lost machine would (used to kill a worker node in tests).
    Processes seen once are followed even if they lose their link to the rehearsal (orphans)."""
    seen: set[Process] = set()

    def remaining() -> set[Process]:
        found = {p for p, c in processes(rehearsal.id).items() if components is None or c in components}
        seen.update(found)
        return {p for p in seen if alive(p)}

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if wait <= 0:
            continue
        for pid, _ in remaining():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while remaining() and time.monotonic() < deadline:
            time.sleep(0.2)
    left = remaining()
    if left:
        raise RuntimeError(f"processes {sorted(p for p, _ in left)} of rehearsal {rehearsal.id} did not stop")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], what: str, log: Path, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s; end of {log}:\n" + "\n".join(tail))


def http_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Launcher:
    """Starts components with the rehearsal's marker in their environment, logs under ``DIR/logs``."""

    def __init__(self, rehearsal: Rehearsal):
        self.r = rehearsal
        self.logs = Path(rehearsal.dir, "logs")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.base_env = {
            **os.environ,
            **AWS_ENV,
            "AWS_ENDPOINT_URL_S3": rehearsal.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": rehearsal.s3_endpoint,
            # The job's `python` is the first on the PATH of the `ray start` that hosts it.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def env(self, component: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.base_env, **(extra or {}), MARKER: self.r.marker(component)}

    def spawn(self, component: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Path:
        """A long-running server in its own session, so a terminal's Ctrl-C does not reach it."""
        log = self.logs / f"{component}.log"
        with open(log, "ab") as out:
            subprocess.Popen(argv, env=self.env(component, extra_env), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.r.components.append(component)
        return log

    def ray_start(self, component: str, args: list[str]) -> None:
        """``ray start`` returns once the node is up; its daemons keep the marker."""
        log = self.logs / f"{component}.log"
        ray_env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.r.token_file,
            "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",  # the dashboard's Train view (runs, attempts, workers)
        }
        argv = [str(Path(sys.executable).parent / "ray"), "start", *args,
                f"--temp-dir={Path(self.r.ray_temp, component)}",
                f"--dashboard-agent-listen-port={free_port()}",  # the fixed default collides between nodes
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats"]
        self.r.components.append(component)
        with open(log, "ab") as out:
            try:
                code = subprocess.run(argv, env=self.env(component, ray_env), stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      timeout=START_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                code = "timed out"
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"`ray start` of {component} failed ({code}); end of {log}:\n{tail}")


def up(directory: Path, workers: int = 1, head_cpus: int = 2, worker_cpus: int = 1) -> Rehearsal:
    """Start the rehearsal; on any failure stop what was started and re-raise."""
    directory = directory.resolve()
    previous = Rehearsal.load(directory)
    if previous is not None and processes(previous.id):
        raise RuntimeError(f"a rehearsal is already running in {directory}: stop it first (down --dir {directory})")
    directory.mkdir(parents=True, exist_ok=True)
    rid = secrets.token_hex(4)
    short = directory / "ray"
    ray_temp = short if len(str(short)) <= MAX_RAY_TEMP_LEN else Path("/tmp", f"jepa-ray-{rid}")
    token_file = directory / TOKEN_FILE
    token_file.touch(mode=0o600)
    token_file.chmod(0o600)
    token_file.write_text(secrets.token_hex(32))
    r = Rehearsal(str(directory), rid, str(ray_temp), str(token_file), free_port(), free_port(), free_port(),
                  free_port(), workers)
    r.save()
    launch = Launcher(r)
    try:
        log = launch.spawn("s3", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(r.s3_port)])
        wait_for(lambda: http_ok(r.s3_endpoint), "the object store (moto)", log)
        create_bucket(r)
        log = launch.spawn("mlflow", [
            sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(r.mlflow_port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{BUCKET}/mlflow",
        ], {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # its job runners (GenAI) are 7 processes we do not need
        launch.ray_start("head", [
            "--head", f"--port={r.gcs_port}", f"--num-cpus={head_cpus}",
            "--resources", json.dumps({"trial_driver": 8}),
            "--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={r.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
        ])
        token = token_file.read_text()
        wait_for(lambda: http_ok(f"{r.dashboard_url}/api/version", token), "the Ray dashboard",
                 launch.logs / "head.log")
        for i in range(1, workers + 1):
            launch.ray_start(f"worker{i}", [
                f"--address={HOST}:{r.gcs_port}", f"--num-cpus={worker_cpus}",
                "--resources", json.dumps({f"node{i}": 1}),
            ])
        wait_for(lambda: http_ok(f"{r.tracking_uri}/health"), "the MLflow server", log)
    except BaseException:
        stop(r)
        raise
    finally:
        r.save()
    return r


def create_bucket(r: Rehearsal) -> None:
    """With pyarrow's S3 filesystem (creating a top-level folder creates the bucket)."""
    from pyarrow.fs import S3FileSystem

    S3FileSystem(
        access_key=AWS_ENV["AWS_ACCESS_KEY_ID"], secret_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region=AWS_ENV["AWS_DEFAULT_REGION"], endpoint_override=r.s3_endpoint, scheme="http",
        allow_bucket_creation=True,
    ).create_dir(BUCKET)


def down(directory: Path) -> bool:
    """Stop everything the rehearsal in ``directory`` started and delete the files ``up`` wrote
    there (token, state); False when there was none. ``StateError`` leaves everything as it is."""
    directory = directory.resolve()
    r = Rehearsal.load(directory)
    if r is None:
        return False
    stop(r)
    (directory / TOKEN_FILE).unlink(missing_ok=True)
    (directory / REHEARSAL_STATE_FILE).unlink()
    return True


def summary(r: Rehearsal) -> str:
    """The summary ``up`` and ``status`` print: endpoints, client environment, the submit line."""
    env = "\n".join(f"  export {k}={shlex.quote(v)}" for k, v in r.client_env().items())
    return "\n".join([
        f"rehearsal {r.id} in {r.dir} (state: {Path(r.dir, REHEARSAL_STATE_FILE)}, logs: {Path(r.dir, 'logs')})",
        f"  ray head      {HOST}:{r.gcs_port}, dashboard {r.dashboard_url}, {r.workers} worker node(s); "
        f"token auth on (token in {r.token_file}, or `RAY_AUTH_TOKEN_PATH={r.token_file} ray get-auth-token`)",
        f"  object store  {r.s3_endpoint} (moto), bucket {BUCKET}, sweeps under {r.storage}",
        f"  mlflow        {r.tracking_uri} (SQLite backend, artifacts in s3://{BUCKET}/mlflow)",
        "client environment:",
        env,
        "submit a sweep (from the project root):",
        f"  {r.submit_line()}",
        f"stop it all:    python cluster/rehearsal.py down --dir {shlex.quote(r.dir)}",
    ])


def status(r: Rehearsal) -> tuple[bool, str]:
    """Whether every component has live processes, and a report."""
    live = list(processes(r.id).values())
    counts = {c: live.count(c) for c in r.components}
    token = Path(r.token_file).read_text() if Path(r.token_file).is_file() else None
    probes = {
        "head": http_ok(f"{r.dashboard_url}/api/version", token),
        "mlflow": http_ok(f"{r.tracking_uri}/health"),
        "s3": http_ok(r.s3_endpoint),
    }
    lines = []
    for c, n in counts.items():
        probe = probes.get(c)
        answer = "" if probe is None else (", answering" if probe else ", NOT answering")
        lines.append(f"  {c:<10} {n} process(es){answer}")
    healthy = all(counts.values()) and all(probes.values())
    return healthy, "\n".join([summary(r), "components:", *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python cluster/rehearsal.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=None, help="rehearsal folder (default $JEPA_SWEEPS_HOME/rehearsal)")
    parser.add_argument("--workers", type=int, default=1, help="Ray worker nodes besides the head (up)")
    parser.add_argument("--head-cpus", type=int, default=2, help="logical CPUs of the head (up)")
    parser.add_argument("--worker-cpus", type=int, default=1, help="logical CPUs of each worker node (up)")
    args = parser.parse_args(argv)
    directory = args.dir or default_dir()
    try:
        return command(parser, args, directory)
    except StateError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


def command(parser: argparse.ArgumentParser, args: argparse.Namespace, directory: Path) -> int:
    if args.command == "up":
        if args.workers < 0 or args.head_cpus < 1 or args.worker_cpus < 1:
            parser.error("--workers must be ≥ 0, --head-cpus and --worker-cpus ≥ 1")
        try:
            r = up(directory, args.workers, args.head_cpus, args.worker_cpus)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(summary(r))
        return 0
    if args.command == "down":
        print(f"stopped the rehearsal in {directory}" if down(directory) else f"no rehearsal in {directory}")
        return 0
    r = Rehearsal.load(directory.resolve())
    if r is None:
        print(f"no rehearsal in {directory}")
        return 1
    healthy, report = status(r)
    print(report)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
