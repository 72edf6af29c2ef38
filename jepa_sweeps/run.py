"""``python -m jepa_sweeps.run SPEC [--set k=v ...] [--dry-run] [--fresh]``

Validate → print the plan → connect to (or start) Ray → run or resume the sweep → summary.
Bad input exits with status 2 and at most three lines, before Ray starts or anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from jepa_sweeps.config import ConfigError
from jepa_sweeps.preflight import check_cluster, check_storage, check_tracking
from jepa_sweeps.redaction import hide_credentials, redact, redact_logs, shorten
from jepa_sweeps.spec import SweepSpec, load_spec
from jepa_sweeps.sweep import Locations, home, locate, read_state

EXIT_USAGE = 2


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
        state = read_state(spec, loc)
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
    base = spec.trial_config({})
    lines = [
        f"sweep {spec.name!r}: {spec.num_samples} configurations × {spec.seeds} seed(s), "
        f"{spec.metric} ({spec.mode}), scheduler {spec.scheduler.name}" + (" — resuming" if resume else ""),
        f"  base: {base.objective.name} on {base.data.name}, encoder {base.encoder.name}, {base.epochs} epochs, "
        f"batch {base.optim.batch_size}, views {base.views.n_global}+{base.views.n_local}",
    ]
    for key, dist in spec.searched.items():
        lines.append(f"  search {key}: {dist.text()}")
    for point in spec.points:
        lines.append(f"  point {shorten(json.dumps(point), 300)}")
    r = spec.resources
    lines += [
        f"  each trial: {r.workers} DDP worker(s) × {r.cpus_per_worker} CPU"
        + (f" + {r.gpus_per_worker} GPU" if r.gpus_per_worker else "")
        + f", driver {r.driver_cpus} CPU; ≤ {r.max_concurrent_trials} trial(s) at once",
        f"  storage: {redact(loc.storage)}/{spec.name}",
        f"  mlflow:  {redact(loc.tracking_uri)} (experiment {loc.experiment!r})",
    ]
    return redact("\n".join(lines))


def init_ray(loc: Locations) -> None:
    """Connect to the cluster (under ``ray job submit`` or with RAY_ADDRESS), else start a local one.

    The local dashboard frees the placement groups of trials ASHA stops: Train's cleaner asks the
    dashboard's state API whether a trial's controller died. It finds that API by scanning the
    machine, which fails when another Ray runs beside this one, so its address is passed to every
    worker explicitly.
    """
    import ray

    if ray.is_initialized():  # started by the caller (tests, a notebook)
        return
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or os.environ.get("RAY_ADDRESS"):
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
    if hosts < 2 or "://" in storage:
        return
    kind = filesystem_type(storage)
    if not kind.startswith(SHARED_FILESYSTEMS):
        raise ConfigError(
            f"storage={storage!r} is on a {kind} filesystem local to this node, but the cluster spans "
            f"{hosts} hosts; use s3://, gs:// or a shared filesystem (--set storage=...)"
        )


def refuse(err: ConfigError) -> int:
    """At most three lines, each redacted and then shortened."""
    lines = str(err).splitlines()[:3] or [type(err).__name__]
    print("\n".join(f"error: {shorten(line, 300)}" if i == 0 else shorten(line, 300) for i, line in enumerate(lines)),
          file=sys.stderr)
    return EXIT_USAGE


def without_credentials(spec: SweepSpec, loc: Locations) -> tuple[SweepSpec, Locations]:
    """The spec and locations Ray and Tune get (and pickle into storage): the tracking URI's
    credentials moved into this process's environment, where MLflow's client finds them."""
    uri = hide_credentials(loc.tracking_uri)
    mlflow = spec.mlflow.model_copy(update={"tracking_uri": uri if spec.mlflow.tracking_uri else None})
    return spec.model_copy(update={"mlflow": mlflow}), Locations(loc.storage, uri, loc.experiment)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    redact_logs()
    try:
        spec = load_spec(args.spec, args.overrides)
        loc = locate(spec)
        check_storage(loc.storage)
        check_tracking(loc.tracking_uri)
        state = earlier_state(spec, loc, args.fresh)
        if state and state.get("digest") != spec.digest() and not args.fresh:
            raise ConfigError(
                f"name={spec.name!r}: the spec changed since this sweep started (digest {state.get('digest')} → "
                f"{spec.digest()}); pass --fresh to start it over, or give it a new name"
            )
    except ConfigError as err:
        return refuse(err)
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
        check_cluster(spec.resources)
    except ConfigError as err:
        return refuse(err)
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
