"""Row 7: sweep makespan — the main job through the product ÷ the same training without a framework.

The product's side is the user's command, ``python -m jepa_sweeps.run search_spaces/lambda.yaml``
(Optuna seed fixed by the spec), from a fresh ``JEPA_SWEEPS_HOME``: wall time from launch to exit,
Ray's start and the summary included. The other side trains the same trials — each child run's
``trial_config.json``, stopped after the epochs that sweep trained it (ASHA's stops included) —
one after another as plain gloo processes (``benchmarks.plain``: no Ray, no MLflow), each from
process spawn to exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row
from benchmarks.plain import plain_run
from jepa_sweeps.config import TrialConfig

ROOT = Path(__file__).resolve().parents[1]
LAMBDA_SPEC = ROOT / "search_spaces" / "lambda.yaml"


def sweep_trials(tracking_uri: str, experiment: str) -> list[tuple[TrialConfig, int]]:
    """Each child run's config and the epochs it trained (its last report's step)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([found.experiment_id], max_results=10000)
            if "mlflow.parentRunId" in r.data.tags]
    trials = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.info.run_id, "trial_config.json", tmp)
            cfg = TrialConfig.model_validate(json.loads(Path(path).read_text()))
        epochs = max((m.step for m in client.get_metric_history(run.info.run_id, "loop_s")), default=0)
        trials.append((cfg, epochs))
    return trials


def makespan_row(workdir: Path, overrides: tuple[str, ...] = ()) -> Row:
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reading trial_config.json back
    env.update(JEPA_SWEEPS_HOME=str(home), RAY_AUTH_MODE="disabled",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "jepa_sweeps.run", str(LAMBDA_SPEC), *[a for o in overrides for a in ("--set", o)]]
    started = time.time()
    done = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True, timeout=3600)
    sweep_s = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"the sweep failed: {done.stderr[-2000:]}")
    (workdir / "sweep.log").write_text(done.stdout)
    trials = sweep_trials(f"sqlite:///{home / 'mlflow.db'}", "lambda")
    plain_s = []
    for cfg, epochs in trials:
        threads = 1  # what the trial's workers run with at cpus_per_worker < 2
        begin = time.time()
        plain_run(cfg, threads, workdir / "plain", stop_after=epochs)
        plain_s.append(time.time() - begin)
    ratio = sweep_s / sum(plain_s)
    details = {"sweep_s": round(sweep_s, 1), "plain_s": [round(x, 1) for x in plain_s],
               "epochs": [e for _, e in trials], "workers": [c.workers for c, _ in trials],
               "overrides": list(overrides), "summary_tail": done.stdout.strip().splitlines()[-16:]}
    return Row("7", "sweep makespan: lambda.yaml ÷ same trials as plain serial DDP", f"{ratio:.2f}", "≤ 1.0",
               ratio <= 1.0, ratio, details,
               [f"python -m jepa_sweeps.run lambda.yaml: {sweep_s:.0f} s for {len(trials)} trials "
                f"({sum(e for _, e in trials)} epochs); the same trials as plain gloo processes one after another: "
                f"{sum(plain_s):.0f} s"])
