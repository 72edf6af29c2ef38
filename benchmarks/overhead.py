"""Rows 1 and 6: what Ray Tune + Ray Train + MLflow cost a trial, against plain torch.distributed.

Real trials go through the runner's own path (``init_ray``, ``build_tuner`` with the
``SweepLogger``, the trial driver, a 2-worker ``TorchTrainer``) and log to a real ``mlflow
server`` on 127.0.0.1. The same trial config also runs as plain gloo processes calling ``train``
with ``LocalHooks`` (no Ray, no MLflow; ``benchmarks.plain``), alternating with the Ray trials
(plain, Ray, plain, Ray, …, plain), so that every Ray trial is bracketed in time by two plain
runs. Both report ``images_per_s`` per epoch; the first epoch is warm-up. Epochs during which the
hypervisor stole more CPU than ``STEAL_LIMIT`` (or than the median epoch, when most were hit) are
left out of both sides: that slowdown is the host's, not Ray's.

Each round's Ray side is a sweep of two trials, one after the other (λ = 0.05 and 0.1: the same
compute): the first starts in a fresh Ray, as a sweep's first trial does; the second shows the
start-up of every later trial (Tune reuses the first trial's driver, Ray's helper actors are up).

Start-up: driver-side stamps of ``Tuner.fit``, each trial's start and end, and each report's
arrival. The worker's epoch 1 began ``loop_s`` before report 1 was sent (the worker's own clock
from its loop's start, which every report carries), so at most that long before it arrived: the
start-up is an upper bound, within the reporting lag. The first trial's start-up counts from
``Tuner.fit``, the second's from the end of the first (when its resources were freed). The plain
run stamps when training begins. ``plain_startup_estimated_s`` checks the report-time estimate
(``Run.estimated_begin``) against the plain run's stamp.

Requests: every HTTP request the driver's MLflow client sends is counted by the logger hook
that sent it (wrapping ``requests.Session.request``) and cross-checked in the server's access log.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import requests
from ray import tune

from benchmarks.common import Row, StealMeter, median
from benchmarks.cputime import TreeCpu
from benchmarks.plain import RAY_WORKER_NICENESS, Run, epoch_images, free_port, plain_run
from jepa_sweeps import tracking
from jepa_sweeps.config import TrialConfig
from jepa_sweeps.spec import SweepSpec, load_spec

LAMBDA_SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "lambda.yaml"
STEAL_LIMIT = 0.01  # epochs with more CPU stolen by the host than this are not compared


def trial_spec(epochs: int, storage: Path, tracking_uri: str) -> SweepSpec:
    """The main job's trial (search_spaces/lambda.yaml) at λ = 0.05 then 0.1, one after the other."""
    return load_spec(LAMBDA_SPEC, [
        "name=bench_overhead", f"epochs={epochs}", "num_samples=2", "search.objective.lam={choice: [0.05, 0.1]}",
        "points=[{objective.lam: 0.05}, {objective.lam: 0.1}]", "scheduler.name=fifo",
        "resources.max_concurrent_trials=1", f"storage={storage}", f"mlflow.tracking_uri={tracking_uri}",
    ])


# -- the Ray trial -----------------------------------------------------------------------------


class RequestCounter:
    """HTTP requests of this process, by the phase (logger hook) that was active when sent."""

    def __init__(self) -> None:
        self.current: str | None = None
        self.requests: Counter[tuple[str, str]] = Counter()  # (phase, path) → count
        self.calls: Counter[str] = Counter()  # phase → hook calls
        self.per_call: dict[str, list[int]] = {}  # phase → requests of each call

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        outer, self.current = self.current, name
        before = sum(n for (p, _), n in self.requests.items() if p == name)
        try:
            yield
        finally:
            self.current = outer
            self.calls[name] += 1
            after = sum(n for (p, _), n in self.requests.items() if p == name)
            self.per_call.setdefault(name, []).append(after - before)

    def total(self, phase: str) -> int:
        return sum(n for (p, _), n in self.requests.items() if p == phase)

    @contextmanager
    def installed(self) -> Iterator[None]:
        send = requests.Session.request
        counter = self

        def counted(session: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if counter.current is not None:
                counter.requests[(counter.current, f"{method.upper()} {url.split('://', 1)[-1].split('/', 1)[-1]}")] += 1
            return send(session, method, url, *args, **kwargs)

        def upload(*args: Any, **kwargs: Any) -> None:
            with counter.phase("upload"):
                upload_files(*args, **kwargs)

        upload_files = tracking.upload_checkpoint_files
        with mock.patch.object(requests.Session, "request", counted), \
                mock.patch.object(tracking, "upload_checkpoint_files", upload):
            yield


class CountingLogger(tracking.SweepLogger):
    """The product's logger, each hook inside a counting phase."""

    def __init__(self, counter: RequestCounter, *args: Any) -> None:
        super().__init__(*args)
        self.counter = counter

    def log_trial_start(self, trial: Any) -> None:
        with self.counter.phase("start"):
            super().log_trial_start(trial)

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        with self.counter.phase("result"):
            super().log_trial_result(iteration, trial, result)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        with self.counter.phase("end"):
            super().log_trial_end(trial, failed)


class Clock(tune.Callback):
    """Driver-side stamps of each trial's start (its driver is up), reports and completion, in the
    order the trials started."""

    def __init__(self) -> None:
        self.stamps: dict[str, dict[str, float]] = {}
        self.results: dict[str, list[tuple[float, dict[str, Any]]]] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.stamps[trial.trial_id] = {"started": time.time()}
        self.results[trial.trial_id] = []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.results[trial.trial_id].append((time.time(), result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.stamps[trial.trial_id]["completed"] = time.time()


@contextmanager
def mlflow_server(workdir: Path) -> Iterator[tuple[str, Path]]:
    """A real ``mlflow server`` (one uvicorn worker) on a free loopback port; yields its URI and
    access log."""
    log = workdir / "mlflow-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{workdir / 'server.db'}",
        "--artifacts-destination", str(workdir / "server-artifacts"),
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"mlflow server did not come up; see {log}") from None
                time.sleep(1)
        yield uri, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def access_log_counts(log: Path) -> Counter[str]:
    """API requests the server logged, by path (health checks left out)."""
    counts: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        if '"' in line and "/api/" in line:
            counts[line.split('"')[1].rsplit(" ", 1)[0]] += 1
    return counts


def ray_run(spec: SweepSpec, counter: RequestCounter) -> list[tuple[Run, dict[str, float]]]:
    """The sweep's trials through the runner's own machinery, in the Ray this process runs: each
    trial's run and stamps (``fit``, its start and end, and when its Ray processes were ready)."""
    from mlflow.tracking import MlflowClient

    from jepa_sweeps.storage import locate
    from jepa_sweeps.sweep import build_tuner

    loc = locate(spec)
    client = MlflowClient(loc.tracking_uri)
    experiment = tracking.ensure_experiment(client, loc.experiment, loc.artifact_root)
    parent = tracking.start_parent_run(client, experiment, spec, tags={})
    clock = Clock()
    tuner = build_tuner(spec, loc, [CountingLogger(counter, spec, loc.tracking_uri, experiment, parent), clock])
    launched = time.time()
    with counter.installed():
        tuner.fit()
    images = epoch_images(spec.trial_for({}))
    trials, since = [], launched
    for trial_id, stamps in clock.stamps.items():
        results = clock.results[trial_id]
        # Epoch 1 began ``loop_s`` (the worker's clock from its loop's start) before its report was
        # sent, so at most that long before it arrived here: an upper bound, within the reporting lag.
        run = Run(since, [t for t, _ in results], [r["images_per_s"] for _, r in results], images,
                  begun=results[0][0] - results[0][1]["loop_s"])
        trials.append((run, {"fit": since, **stamps, **process_starts(since, stamps["completed"])}))
        since = stamps["completed"]
    return trials


def process_starts(since: float, until: float) -> dict[str, float]:
    """When the trial's Ray processes (driver, Train controller, workers) were ready, from Ray's
    state API: where start-up time goes."""
    import ray
    from ray.util.state import list_actors, list_workers

    address = ray.get_runtime_context().gcs_address
    names = {a.pid: a.class_name for a in list_actors(address=address, detail=True, limit=10000)}
    ready: dict[str, float] = {}
    for w in list_workers(address=address, detail=True, limit=10000):
        if w.pid in names and w.start_time_ms and since <= w.start_time_ms / 1000 <= until:
            key = f"ready:{names[w.pid]}"
            ready[key] = max(ready.get(key, 0.0), w.start_time_ms / 1000)
    return ready


def overhead_rows(epochs: int, workdir: Path, rounds: int = 1, baseline_after: bool = True) -> list[Row]:
    """Rows 1 (throughput ratio), 1b (start-up) and 6 (MLflow requests) from ``rounds`` Ray trials
    of ``epochs`` epochs, each after a plain run (and one more plain run at the end with
    ``baseline_after``). Alternating the two cancels the drift of a shared machine's speed, which
    here is larger than the overhead being measured; each trial gets its own Ray, so that no Ray
    process runs beside a plain run."""
    import ray

    from jepa_sweeps.run import init_ray
    from jepa_sweeps.storage import locate

    with mlflow_server(workdir) as (uri, log), StealMeter() as steal, TreeCpu() as cpu:
        # A storage folder per trial: under one folder, each trial would resume the finished first.
        specs = [trial_spec(epochs, workdir / f"storage-{i}", uri) for i in range(rounds)]
        cfg = specs[0].trial_for({})
        threads = max(1, int(specs[0].resources.cpus_per_worker))
        baseline: list[Run] = []
        rounds_: list[tuple[list[tuple[Run, dict[str, float]]], RequestCounter]] = []
        for spec in specs:
            baseline.append(plain_run(cfg, threads, workdir))
            counter = RequestCounter()
            init_ray(locate(spec))
            try:
                rounds_.append((ray_run(spec, counter), counter))
            finally:
                ray.shutdown()
        if baseline_after:
            baseline.append(plain_run(cfg, threads, workdir))
        served = access_log_counts(log)
    runs = [[run for run, _ in trials] for trials, _ in rounds_]
    return [throughput_row(runs, baseline, cfg, steal),
            cpu_time_row([run for trials in runs for run in trials], baseline, cpu),
            startup_row([trials for trials, _ in rounds_], baseline),
            requests_row([counter for _, counter in rounds_], served)]


def throughput_row(rounds: list[list[Run]], baseline: list[Run], cfg: TrialConfig, steal: StealMeter) -> Row:
    """Median images/s of the Ray trials' steady epochs ÷ that of the plain runs', both over the
    epochs the host left alone (``STEAL_LIMIT``), with a 95 % interval from resampling whole runs
    (a run's epochs share its luck); unfiltered figures are kept as a cross-check."""
    ray_trials = [run for trials in rounds for run in trials]
    epochs = {
        kind: [[(x, steal.fraction(*window)) for x, window in zip(run.steady, run.steady_windows())] for run in runs]
        for kind, runs in (("ray", ray_trials), ("plain", baseline))
    }
    limit = max(STEAL_LIMIT, median([f for runs in epochs.values() for run in runs for _, f in run]))
    if not all(any(f <= limit for run in runs for _, f in run) for runs in epochs.values()):
        limit = math.inf  # one side was stolen from throughout: compare everything rather than nothing
    kept = {kind: [[x for x, f in run if f <= limit] for run in runs] for kind, runs in epochs.items()}
    speed = {kind: median([x for run in runs for x in run]) for kind, runs in kept.items()}
    ratio = speed["ray"] / speed["plain"]
    low, high = bootstrap_interval(kept["ray"], kept["plain"])
    unfiltered = pooled_ratio([run.steady for run in ray_trials], [run.steady for run in baseline])
    plain = [median(run.steady) for run in baseline]
    ours = [median([x for run in trials for x in run.steady]) for trials in rounds]  # per round
    bracketed = [x / (sum(plain[i:i + 2]) / len(plain[i:i + 2])) for i, x in enumerate(ours)]
    count = {kind: f"{sum(map(len, kept[kind]))}/{sum(map(len, epochs[kind]))}" for kind in kept}
    details = {
        "ray_images_per_s": [[round(x, 1) for x in run.images_per_s] for run in ray_trials],
        "plain_images_per_s": [[round(x, 1) for x in run.images_per_s] for run in baseline],
        "steal_per_steady_epoch": {kind: [[round(f, 4) for _, f in run] for run in runs] for kind, runs in epochs.items()},
        "steal_limit": round(limit, 4) if limit < math.inf else None,
        "epochs_compared": count,
        "interval_95": [round(low, 4), round(high, 4)],
        "ratio_unfiltered": round(unfiltered, 4),
        "ratio_per_round_unfiltered": [round(r, 4) for r in bracketed],
        "config": f"{cfg.encoder.name} on {cfg.data.name}, batch {cfg.optim.batch_size}, "
                  f"views {cfg.views.n_global}+{cfg.views.n_local}, {cfg.workers} workers, {cfg.objective.name}",
        "plain_niceness": RAY_WORKER_NICENESS,
    }
    kept_epochs = (f"epochs with ≤ {100 * limit:.1f} % CPU stolen by the host" if limit < math.inf
                   else "all epochs (the host stole from every epoch of one side)")
    sequence = " ".join(f"{p:.0f} | {o:.0f} |" for p, o in zip(plain, ours)) + (
        f" {plain[-1]:.0f}" if len(plain) > len(ours) else "")
    return Row("1", "framework overhead: Ray trial ÷ plain DDP images/s", f"{ratio:.4f}", "≥ 0.95", ratio >= 0.95,
               ratio, details, [
                   f"steady images/s over {kept_epochs}: Ray "
                   f"{speed['ray']:.0f} ({count['ray']} epochs) vs plain "
                   f"torch.distributed {speed['plain']:.0f} ({count['plain']}); "
                   f"95 % interval {low:.3f}–{high:.3f} ({details['config']})",
                   f"all epochs, runs alternating plain | Ray: {sequence}; ratio {unfiltered:.3f}",
               ])


def cpu_time_row(ray_trials: list[Run], baseline: list[Run], cpu: TreeCpu) -> Row:
    """Images trained per CPU-second of every process involved (this driver, Ray's daemons and
    helper actors, the trial's driver and workers; or the plain ranks), from the first report to
    the last (epochs 2…N with their evaluations), Ray ÷ plain, medians over the runs. Far less
    sensitive to other load than wall-clock speed: waiting for a core costs no CPU time."""
    def per_cpu_second(run: Run) -> float:
        images = (len(run.report_times) - 1) * run.epoch_images
        return images / cpu.between(run.report_times[0], run.report_times[-1])

    ours, plain = [per_cpu_second(r) for r in ray_trials], [per_cpu_second(r) for r in baseline]
    ratio = median(ours) / median(plain)
    details = {"ray_images_per_cpu_s": [round(x, 1) for x in ours],
               "plain_images_per_cpu_s": [round(x, 1) for x in plain], "sample_interval_s": cpu.interval}
    return Row("1c", "framework overhead, CPU time: Ray ÷ plain images per CPU-s", f"{ratio:.4f}", "≥ 0.95",
               ratio >= 0.95, ratio, details,
               [f"images per CPU-second (whole process trees, /proc): Ray {median(ours):.0f} {details['ray_images_per_cpu_s']}"
                f" vs plain {median(plain):.0f} {details['plain_images_per_cpu_s']}"])


def pooled_ratio(ours: list[list[float]], plain: list[list[float]]) -> float:
    return median([x for run in ours for x in run]) / median([x for run in plain for x in run])


def bootstrap_interval(ours: list[list[float]], plain: list[list[float]], draws: int = 2000) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of ``pooled_ratio`` over runs drawn with replacement on each side
    (seeded: the same epochs give the same interval)."""
    rng = random.Random(0)
    ratios = []
    for _ in range(draws):
        a, b = rng.choices(ours, k=len(ours)), rng.choices(plain, k=len(plain))
        if any(a) and any(b):
            ratios.append(pooled_ratio(a, b))
    ratios.sort()
    return ratios[int(0.025 * len(ratios))], ratios[min(int(0.975 * len(ratios)), len(ratios) - 1)]


def startup_row(rounds: list[list[tuple[Run, dict[str, float]]]], baseline: list[Run]) -> Row:
    """Medians over the rounds: the first trial (from ``Tuner.fit`` in a fresh Ray) and the second
    (from the first's end: what every later trial of a sweep pays); the timelines of round 1."""
    def startup(run: Run, stamps: dict[str, float]) -> float:
        return run.begun - stamps["fit"]

    first = [startup(*trials[0]) for trials in rounds]
    later = [startup(*trials[1]) for trials in rounds]

    def timeline(run: Run, stamps: dict[str, float]) -> dict[str, float]:
        out = {k: round(v - stamps["fit"], 2) for k, v in sorted(stamps.items(), key=lambda kv: kv[1])}
        return {**out, "first_epoch_begins": round(startup(run, stamps), 2),
                "last_report": round(run.report_times[-1] - stamps["fit"], 2)}

    details = {
        "first_trial_startup_s": [round(x, 2) for x in first],
        "later_trial_startup_s": [round(x, 2) for x in later],
        "timeline_first_s": timeline(*rounds[0][0]),
        "timeline_later_s": timeline(*rounds[0][1]),
        "teardown_s": [round(st["completed"] - run.report_times[-1], 2) for trials in rounds for run, st in trials],
        "plain_startup_s": [round(run.begun - run.launched, 2) for run in baseline],
        "plain_startup_estimated_s": round(baseline[0].estimated_begin() - baseline[0].launched, 2),
    }
    plain = median(details["plain_startup_s"])
    value = median(first)
    return Row("1b", "start-up per trial (Tuner.fit → epoch 1 begins)", f"{value:.1f} s / {median(later):.1f} s",
               "≤ 12 s", value <= 12, value, details,
               [f"first trial of a sweep {value:.1f} s, every later trial {median(later):.1f} s (from the previous "
                f"trial's end); plain torch.distributed (spawn → epoch 1): {plain:.1f} s; "
                f"after the last report: {median(details['teardown_s']):.1f} s"])


def requests_row(counters: list[RequestCounter], served: Counter[str]) -> Row:
    """Requests of every report of every trial; the once-per-trial requests of the first trial."""
    per_report = [n for counter in counters for n in counter.per_call.get("result", [])]
    value = sum(per_report) / max(len(per_report), 1)
    first = counters[0]
    trials = max(first.calls["start"], 1)
    details = {
        "per_report": per_report,
        "rounds": len(counters),
        "trial_start": first.total("start") / trials,
        "trial_end": first.total("end") / trials,
        "checkpoint_uploads": {"calls": first.calls["upload"], "requests": first.total("upload")},
        "by_endpoint": {f"{phase}: {path}": n for (phase, path), n in sorted(first.requests.items())},
        "server_access_log": dict(served),
    }
    return Row("6", "MLflow requests per trial per epoch (metrics)", f"{value:.2f}", "1", value == 1, value, details,
               [f"per report {per_report}; once per trial: start {details['trial_start']}, end "
                f"{details['trial_end']}, plot uploads {details['checkpoint_uploads']['requests']}"])
