"""Row 5: ASHA against FIFO on the main job's λ space, two real sweeps through the runner's path.

Both sweeps are search_spaces/lambda.yaml with fewer samples and epochs and the same Optuna seed
and points; they differ only in the scheduler. Epochs trained are counted from Tune's results
(each trial's last reported epoch; a stopped trial reports every epoch it trained), the metric
is the spec's (kNN accuracy), taken at each trial's last report as Tune ranks trials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import Row
from jepa_sweeps.spec import SweepSpec, load_spec

LAMBDA_SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "lambda.yaml"


def sweep_spec(scheduler: str, samples: int, epochs: int, grace: int, reduction: float, workdir: Path) -> SweepSpec:
    return load_spec(LAMBDA_SPEC, [
        f"name=bench_{scheduler}", f"num_samples={samples}", f"epochs={epochs}", f"scheduler.name={scheduler}",
        f"scheduler.grace_period={grace}", f"scheduler.reduction_factor={reduction}",
        f"storage={workdir / 'storage'}", f"mlflow.tracking_uri=sqlite:///{workdir / 'sweeps.db'}",
    ])


def run_sweep(spec: SweepSpec) -> list[dict[str, Any]]:
    """Each trial's last result (Tune's) and its λ, through ``start_sweep`` as ``jepa_sweeps.run`` does."""
    from jepa_sweeps.storage import locate
    from jepa_sweeps.sweep import start_sweep
    from jepa_sweeps.trial import config_for

    session = start_sweep(spec, locate(spec), None, fresh=True)
    return [{**(r.metrics or {}), "lam": config_for(spec, r.config or {}).objective.lam} for r in session.fit()]


def sweep_row(samples: int, epochs: int, grace: int, reduction: float, workdir: Path) -> Row:
    """Both sweeps in one local Ray, as the runner starts it."""
    import ray

    from jepa_sweeps.run import init_ray
    from jepa_sweeps.storage import locate

    specs = {name: sweep_spec(name, samples, epochs, grace, reduction, workdir) for name in ("asha", "fifo")}
    init_ray(locate(specs["asha"]))
    try:
        results = {name: run_sweep(spec) for name, spec in specs.items()}
    finally:
        ray.shutdown()
    return compare(results, specs["asha"].metric, samples, epochs, grace, reduction)


def compare(results: dict[str, list[dict[str, Any]]], metric: str, samples: int, epochs: int, grace: int,
            reduction: float) -> Row:
    trained = {name: sum(int(r.get("epoch", 0)) for r in rs) for name, rs in results.items()}
    best = {name: 100 * max(r[metric] for r in rs if metric in r) for name, rs in results.items()}
    ratio = trained["asha"] / trained["fifo"]
    gap = best["fifo"] - best["asha"]
    details = {
        "epochs_trained": trained, f"best_{metric}_pct": {k: round(v, 2) for k, v in best.items()},
        "gap_points": round(gap, 2), "samples": samples, "epochs": epochs,
        "asha": {"grace_period": grace, "reduction_factor": reduction},
        "trials": {name: [{"lam": r.get("lam"), "epoch": int(r.get("epoch", 0)), metric: round(r.get(metric, float("nan")), 4)}
                           for r in rs] for name, rs in results.items()},
    }
    return Row("5", "sweep: ASHA epochs ÷ FIFO epochs (best within 2 pt)", f"{ratio:.2f} (Δbest {gap:+.1f} pt)",
               "≤ 0.5, ≤ 2 pt", ratio <= 0.5 and gap <= 2, ratio, details,
               [f"{samples} samples × {epochs} epochs: ASHA trained {trained['asha']} epochs, FIFO {trained['fifo']}; "
                f"best {metric} ASHA {best['asha']:.1f} % vs FIFO {best['fifo']:.1f} %"])
