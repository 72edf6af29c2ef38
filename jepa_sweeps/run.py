"""``python -m jepa_sweeps.run SPEC [--set k=v ...] [--dry-run] [--fresh]``

Validate → print the plan → connect to (or start) Ray → run or resume the sweep → summary.
Bad input exits with status 2 and at most three lines, before Ray starts or anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from jepa_sweeps.cli import usage_error
from jepa_sweeps.config import ConfigError
from jepa_sweeps.home import home
from jepa_sweeps.packing import cluster_capacity, local_capacity, pack
from jepa_sweeps.preflight import check_cluster, check_storage, check_tracking
from jepa_sweeps.redaction import hide_credentials, redact, redact_logs, shorten
from jepa_sweeps.spec import SweepSpec, load_spec
from jepa_sweeps.storage import Locations, is_uri, locate, other_store, read_state


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jepa_sweeps.run", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="sweep spec (YAML), e.g. search_spaces/lambda.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field, e.g. --set epochs=5 --set resources.workers=1")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan only")
    parser.add_argument("--fresh", action="store_true", help="start this sweep over (MLflow keeps old runs)")
    return parser.parse_args(argv)


def earlier_state(spec: SweepSpec, loc: Locations, fresh: bool) -> dict[str, Any] | None:
    """The state of an earlier sweep of this name; an unreadable one only matters without ``--fresh``."""
    try:
        state = read_state(loc)
    except (OSError, ValueError) as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
    else:
        if state is None or isinstance(state, dict):
            return state
        problem = f"expected a JSON object, got {type(state).__name__}"
    if fresh:
        return None
    raise ConfigError(
        f"name={spec.name!r}: unreadable state of an earlier sweep ({problem}); pass --fresh to start it over"
    )


def plan(spec: SweepSpec, loc: Locations, resume: bool) -> str:
    base = spec.trial_for({})
    lines = [
        f"sweep {spec.name!r}: {spec.num_samples} configurations × {spec.seeds} seed(s), "
        f"{spec.metric} ({spec.mode}), scheduler {spec.scheduler.name}" + (" — resuming" if resume else ""),
        f"  base: {base.objective.name} on {base.data.name}, encoder {base.encoder.name}, {base.epochs} epochs, "
        f"batch {base.optim.batch_size}, views {base.views.n_global}+{base.views.n_local}, "
        f"precision {base.optim.precision}, compile {'on' if base.compile else 'off'}",
    ]
    for key, dist in spec.searched.items():
        lines.append(f"  search {key}: {dist.text()}")
    for point in spec.points:
        lines.append(f"  point {shorten(json.dumps(point), 300)}")
    lines += [
        resources_line(spec),
        *([f"  budget: {budget_text(spec)} (no trial starts that would exceed it)"] if spec.budget else []),
        f"  storage: {redact(loc.folder)}",
        f"  mlflow:  {redact(loc.tracking_uri)} (experiment {loc.experiment!r})",
    ]
    return redact("\n".join(lines))


def resources_line(spec: SweepSpec) -> str:
    r = spec.resources
    chosen = "from the cluster when the sweep starts" if on_cluster() else "for this machine"
    return (
        f"  each trial: {r.workers} DDP worker(s) × {r.cpus_per_worker} CPU"
        + (f" + {r.gpus_per_worker} GPU" if r.gpus_per_worker else "")
        + f", driver {r.driver_cpus} CPU; ≤ {r.max_concurrent_trials} trial(s) at once"
        + (f" (pack: auto, chosen {chosen})" if r.pack == "auto" else "")
    )


def budget_text(spec: SweepSpec) -> str:
    b = spec.budget
    parts = [f"{b.device_hours:g} {'GPU' if spec.resources.gpus_per_worker else 'CPU'}-hours"] if b.device_hours else []
    return " and ".join(parts + ([f"{b.wall_minutes:g} min of wall time"] if b.wall_minutes else []))


def on_cluster() -> bool:
    """Whether the runner joins an existing Ray (a job, or RAY_ADDRESS) instead of starting one."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or bool(os.environ.get("RAY_ADDRESS"))


def check_digest(spec: SweepSpec, state: dict[str, Any] | None, fresh: bool) -> None:
    if state and state.get("digest") != spec.digest() and not fresh:
        raise ConfigError(
            f"name={spec.name!r}: the spec changed since this sweep started (digest {state.get('digest')} → "
            f"{spec.digest()}); pass --fresh to start it over, or give it a new name"
        )


def init_ray(loc: Locations) -> None:
    """Connect to the cluster (under ``ray job submit`` or with RAY_ADDRESS), else start a local one.

    The local dashboard serves Ray's state API (``ray list``, the tests' and benchmarks' look at a
    sweep's actors). A process finds that API by scanning the machine, which fails when another Ray
    runs beside this one, so its address is passed to every worker explicitly.
    """
    import ray

    if ray.is_initialized():  # started by the caller (tests, a notebook)
        return
    if on_cluster():
        ray.init(log_to_driver=False)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dashboard_port = s.getsockname()[1]
    # Ray's daemons run above the (nice 15) training workers, so their housekeeping comes out of
    # training time. On one machine nothing scrapes Ray's Prometheus metrics: stop collecting them,
    # and let the dashboard agent sample process stats each 30 s instead of 5 s (its node graphs
    # update that often). Together ≈0.015 of the 2 cores' 0.16 that Ray's background takes here.
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    os.environ.setdefault("REPORTER_UPDATE_INTERVAL_MS", "30000")
    env = {
        "JEPA_SWEEPS_HOME": str(home()),
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
    }
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, 2),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )


SHARED_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "ceph", "glusterfs", "beegfs", "9p", "fuse")


def filesystem_type(path: str) -> str:
    """The type of the mount holding ``path`` (longest mount-point prefix in /proc/mounts)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = os.path.realpath(path)
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3 and (target == fields[1] or target.startswith(fields[1].rstrip("/") + "/")):
            if len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return kind


def check_storage_reaches_every_node(storage: str) -> None:
    """On a multi-node cluster, a head-local storage folder would strand checkpoints on the node
    that wrote them; refuse it here instead of failing deep inside Ray."""
    import ray

    hosts = {n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
    refuse_local_storage(storage, len(hosts))


def refuse_local_storage(storage: str, hosts: int) -> None:
    if hosts < 2 or is_uri(storage):
        return
    kind = filesystem_type(storage)
    if not kind.startswith(SHARED_FILESYSTEMS):
        raise ConfigError(
            f"storage={storage!r} is on a {kind} filesystem local to this node, but the cluster spans "
            f"{hosts} hosts; use s3://, gs:// or a shared filesystem (--set storage=...)"
        )


def without_credentials(spec: SweepSpec, loc: Locations) -> tuple[SweepSpec, Locations]:
    """The spec and locations Ray and Tune get (and pickle into storage): the tracking URI's
    credentials moved into this process's environment, where MLflow's client finds them."""
    uri = hide_credentials(loc.tracking_uri)
    mlflow = spec.mlflow.model_copy(update={"tracking_uri": uri if spec.mlflow.tracking_uri else None})
    return spec.model_copy(update={"mlflow": mlflow}), dataclasses.replace(loc, tracking_uri=uri)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    redact_logs()
    try:
        spec = load_spec(args.spec, args.overrides)
        loc = locate(spec)
        check_storage(loc.storage)
        check_tracking(loc.tracking_uri)
        state = earlier_state(spec, loc, args.fresh)
        if spec.resources.pack == "auto" and not on_cluster():
            spec = pack(spec, *local_capacity())
        check_digest(spec, state, args.fresh)
        recorded = other_store(state, loc) if state and not args.fresh else None
        if recorded is not None:
            raise ConfigError(
                f"name={spec.name!r}: this sweep is tracked in {recorded}, not {redact(loc.tracking_uri)}; "
                "resume it with its own store, or pass --fresh to start it over here"
            )
    except ConfigError as err:
        return usage_error(str(err))
    resume = bool(state) and not args.fresh
    print(plan(spec, loc, resume), flush=True)
    if args.dry_run:
        return 0
    from jepa_sweeps.sweep import finish_sweep, start_sweep

    # MLflow prints a "View run" link per finished run, with any credentials of the tracking URI;
    # the summary ends with one link, redacted.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        init_ray(loc)
        check_storage_reaches_every_node(loc.storage)
        if on_cluster() and spec.resources.pack == "auto":
            spec = pack(spec, *cluster_capacity())
            print(resources_line(spec), flush=True)
            check_digest(spec, state, args.fresh)
        check_cluster(spec.resources)
    except ConfigError as err:
        return usage_error(str(err))
    spec, loc = without_credentials(spec, loc)  # after Ray started: its processes inherit no password
    try:
        session = start_sweep(spec, loc, state if resume else None, fresh=args.fresh)
        results = session.fit()
        print(redact(finish_sweep(spec, loc, session, results)), flush=True)
    except Exception:  # noqa: BLE001 - MLflow's and pyarrow's messages may quote the URI
        print(redact(traceback.format_exc()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
