"""``python -m benchmarks.search [--seeds 20] [--table FILE]``: row 5, the λ search replayed on the table.

The product's own search objects are driven against the dense λ table of ``benchmarks.search_table``
(every epoch of every λ × seed, measured once), the way tabular HPO benchmarks (LCBench, HPOBench,
YAHPO) compare searchers:

- the searcher is ``sweep.searcher(spec)`` — ``Search`` + the spec's ``SearchSpace`` + seeded TPE,
  points enqueued, repeated configurations answered without training — for ``lambda.yaml`` with
  ``optuna.seed`` = the search seed; *random* is the same ``Search`` with Optuna's ``RandomSampler``;
  *grid* runs the table's 17 λ in a random order (no searcher);
- the scheduler is ``sweep.scheduler(spec)`` (ASHA as lambda.yaml sets it, or FIFO), called as Tune's
  controller calls it: ``on_trial_add``, ``on_trial_result`` per epoch (the searcher's
  ``on_trial_result`` too unless the decision is STOP), then ``on_trial_complete`` of both with the
  last result. The only thing they see of a trial is ``trial_id``;
- ``slots`` trials run at once (Tune's ``max_concurrent_trials``): a free slot asks for a suggestion,
  and a searcher that waits (a repeat of a running trial) leaves it idle until the next event.

A suggested λ is replayed as the table's nearest λ in log space (λ = 0 exactly), with one of the
table's 3 seeds drawn at random per trial, so the sweep metric carries the table's seed noise. Each
epoch costs its measured seconds in the table (the first includes building model and data), each
trial start-up ``--startup`` seconds more (default 20 s ≈ row 1b's measured Ray start-up per trial).
The chosen configuration at any moment is the trial with the best *last reported* sweep metric, as
Tune and the run summary rank them; its *true* score is the table's seed-mean final linear-probe
accuracy of its λ. The compute to target is the compute from which on the chosen configuration stays
within 0.5 points of the grid's best (the table's best seed-mean) until the sweep ends. Nothing here
re-implements TPE or ASHA.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
TABLE = DATA / "lambda_table.csv"
SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "lambda.yaml"
TARGET_POINTS = 0.5  # "within 0.5 points of the grid's best"
TRUE_METRIC = "final_linear_acc"
LABEL_FREE = {"sel_loss_scaled": "min", "sel_loss": "min", "isotropy": "min", "rankme": "max"}


# -- the table -------------------------------------------------------------------------------------
@dataclass
class Table:
    """Per (λ, seed): the epochs' metric dicts in order; ``true``: λ → seed-mean final accuracy."""

    runs: dict[tuple[float, int], list[dict[str, float]]]
    header: str

    @classmethod
    def load(cls, path: Path) -> Table:
        lines = path.read_text().splitlines()
        header = next((line for line in lines if line.startswith("#")), "")
        runs: dict[tuple[float, int], list[dict[str, float]]] = defaultdict(list)
        for row in csv.DictReader(line for line in lines if not line.startswith("#")):
            values = {k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
            runs[(values["lam"], int(values["seed"]))].append(values)
        for rows in runs.values():
            rows.sort(key=lambda r: r["epoch"])
        return cls(dict(runs), header)

    @property
    def lambdas(self) -> list[float]:
        return sorted({lam for lam, _ in self.runs})

    def seeds(self, lam: float) -> list[int]:
        return sorted(s for l, s in self.runs if l == lam)

    @property
    def epochs(self) -> int:
        return max(len(r) for r in self.runs.values())

    def final(self, lam: float, key: str) -> float:
        """Seed-mean of ``key`` at the last epoch (NaN where undefined: ``sel_loss_scaled`` at λ = 0)."""
        values = [self.runs[(lam, s)][-1][key] for s in self.seeds(lam)]
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    @property
    def true(self) -> dict[float, float]:
        return {lam: self.final(lam, TRUE_METRIC) for lam in self.lambdas}

    def nearest(self, lam: float) -> float:
        """The table's λ nearest in log space; λ = 0 only for 0."""
        if lam == 0:
            return 0.0
        positive = [l for l in self.lambdas if l > 0]
        return min(positive, key=lambda l: abs(math.log(l) - math.log(lam)))


# -- one simulated sweep -----------------------------------------------------------------------------
@dataclass
class SimTrial:
    """What Tune's schedulers read of a trial: its id."""

    trial_id: str


@dataclass
class Running:
    trial: SimTrial
    lam: float
    seed: int
    epoch: int = 0
    last: dict[str, float] = field(default_factory=dict)


@dataclass
class Method:
    name: str
    sampler: str  # "tpe" | "random" | "grid"
    scheduler: str  # "asha" | "fifo"
    metric: str = "knn_acc"
    mode: str = "max"
    samples: int | None = None  # None: lambda.yaml's num_samples (the grid: every λ once)
    points: bool = True  # lambda.yaml's explicit points first


def spec_for(method: Method, seed: int, samples: int | None) -> Any:
    from jepa_sweeps.spec import load_spec

    overrides = [f"optuna.seed={seed}", f"scheduler.name={method.scheduler}", f"metric={method.metric}",
                 f"mode={method.mode}"]
    if samples is not None:
        overrides.append(f"num_samples={samples}")
    if not method.points:
        overrides.append("points=[]")
    return load_spec(SPEC, overrides)


def build_searcher(method: Method, spec: Any) -> Any:
    import optuna

    from jepa_sweeps.space import SearchSpace
    from jepa_sweeps.sweep import Search, searcher

    if method.sampler == "tpe":
        return searcher(spec)
    space = SearchSpace(spec)
    return Search(spec=spec, num_samples=spec.num_samples, space=space, metric=spec.metric, mode=spec.mode,
                  points_to_evaluate=[space.optuna_params(p) for p in spec.points] or None,
                  sampler=optuna.samplers.RandomSampler(seed=spec.optuna.seed))


class GridSearcher:
    """The researcher's grid: every table λ once, in a seeded random order."""

    def __init__(self, lambdas: list[float], seed: int):
        self.order = list(np.random.default_rng(seed).permutation(lambdas))

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        return {"objective.lam": float(self.order.pop(0))} if self.order else "FINISHED"

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        pass


def lam_of(config: dict[str, Any]) -> float:
    from jepa_sweeps.space import trial_params

    return float(trial_params(config)["objective.lam"])


def simulate(table: Table, method: Method, slots: int, seed: int, startup: float) -> list[tuple[float, float, float]]:
    """One sweep: ``(cumulative epochs, simulated seconds, true score of the chosen config)`` after
    every event that may change the choice."""
    import optuna
    from ray.tune.schedulers import TrialScheduler

    from jepa_sweeps.sweep import scheduler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    np.random.seed(seed)  # ASHA draws its bracket from numpy's global generator
    rng = np.random.default_rng(10_000 + seed)
    spec = spec_for(method, seed, method.samples)
    search = GridSearcher(table.lambdas, seed) if method.sampler == "grid" else build_searcher(method, spec)
    sched = scheduler(spec)
    sched.set_search_properties(spec.metric, spec.mode)
    sign = 1.0 if spec.mode == "max" else -1.0
    true = table.true
    max_t = table.epochs
    running: dict[str, tuple[float, Running]] = {}  # trial id -> (time its next epoch ends, trial)
    last_metric: dict[str, tuple[float, float]] = {}  # trial id -> (oriented metric, λ)
    now, epochs, counter, finished = 0.0, 0, 0, False
    curve: list[tuple[float, float, float]] = []

    def chosen() -> float:
        scored = [(v, lam) for v, lam in last_metric.values() if math.isfinite(v)]
        return true[max(scored)[1]] if scored else math.nan

    def epoch_seconds(r: Running) -> float:
        return table.runs[(r.lam, r.seed)][r.epoch]["seconds"]

    def fill(at: float) -> None:
        nonlocal counter, finished
        while not finished and len(running) < slots:
            trial_id = f"t{counter:04d}"
            config = search.suggest(trial_id)
            if config == "FINISHED":
                finished = True
                return
            if config is None:  # waits for a running trial's result
                return
            counter += 1
            lam = table.nearest(lam_of(config))
            r = Running(SimTrial(trial_id), lam, int(rng.choice(table.seeds(lam))))
            sched.on_trial_add(None, r.trial)
            running[trial_id] = (at + startup + epoch_seconds(r), r)

    fill(now)
    while running:
        trial_id, (now, r) = min(running.items(), key=lambda item: (item[1][0], item[0]))
        row = table.runs[(r.lam, r.seed)][r.epoch]
        r.epoch += 1
        epochs += 1
        result = {**row, "epoch": r.epoch, "training_iteration": r.epoch, "trial_id": trial_id}
        r.last = result
        decision = sched.on_trial_result(None, r.trial, result)
        if decision != TrialScheduler.STOP:
            search.on_trial_result(trial_id, result)
        value = result.get(spec.metric, math.nan)
        last_metric[trial_id] = (sign * value if math.isfinite(value) else math.nan, r.lam)
        if decision == TrialScheduler.STOP or r.epoch >= max_t:
            del running[trial_id]
            sched.on_trial_complete(None, r.trial, result)
            search.on_trial_complete(trial_id, result)
            fill(now)
        else:
            running[trial_id] = (now + epoch_seconds(r), r)
        if not running:
            fill(now)
        curve.append((epochs, now, chosen()))
    return curve


# -- many sweeps ---------------------------------------------------------------------------------------
def run_one(job: tuple[Path, Method, int, int, float]) -> tuple[str, int, int, list[tuple[float, float, float]]]:
    path, method, slots, seed, startup = job
    return method.name, slots, seed, simulate(Table.load(path), method, slots, seed, startup)


def _n(x: float) -> str:
    return f"{x:.0f}" if math.isfinite(x) else "never"


def at(curve: list[tuple[float, float, float]], xs: np.ndarray, axis: int) -> np.ndarray:
    """The best-so-far true score at each compute level ``xs`` (step function; NaN before the first result)."""
    xs_curve = np.array([c[axis] for c in curve])
    ys = np.array([c[2] for c in curve])
    idx = np.searchsorted(xs_curve, xs, side="right") - 1
    out = np.where(idx >= 0, ys[np.clip(idx, 0, None)], np.nan)
    return out


def first_within(curve: list[tuple[float, float, float]], threshold: float, axis: int) -> float:
    """The compute from which on the chosen configuration stays within the target until the sweep
    ends (a sweep stopped any time later reports a good λ); inf when it ends outside."""
    reached = math.inf
    for point in curve:
        if not point[2] >= threshold:
            reached = math.inf
        elif reached == math.inf:
            reached = point[axis]
    return reached


def spearman_ci(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, reps: int = 2000) -> tuple[float, float, float]:
    from scipy.stats import spearmanr

    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    rho = float(spearmanr(x, y).statistic)
    boots = []
    for _ in range(reps):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) > 1 and len(set(y[i])) > 1:
            boots.append(spearmanr(x[i], y[i]).statistic)
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return rho, float(lo), float(hi)


def methods(samples: int | None) -> list[Method]:
    return [
        Method("grid + FIFO", "grid", "fifo"),
        Method("grid + ASHA", "grid", "asha"),
        Method("random + FIFO", "random", "fifo", samples=samples),
        Method("random + ASHA", "random", "asha", samples=samples),
        Method("TPE + FIFO", "tpe", "fifo", samples=samples),
        Method("TPE + ASHA (default)", "tpe", "asha", samples=samples),
        Method("TPE + ASHA, no points", "tpe", "asha", samples=samples, points=False),
    ]


def label_free_methods(samples: int | None) -> list[Method]:
    return [Method(f"TPE + ASHA by {m}", "tpe", "asha", m, mode, samples) for m, mode in LABEL_FREE.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--seeds", type=int, default=20, help="search seeds per method and slot count")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--samples", type=int, default=None, help="num_samples (default: lambda.yaml's)")
    parser.add_argument("--startup", type=float, default=20.0, help="simulated seconds of start-up per trial")
    parser.add_argument("--jobs", type=int, default=2, help="processes replaying sweeps")
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    _, text = replay(args.table, args.seeds, args.slots, args.samples, args.startup, args.jobs, args.out)
    print(text)
    print(f"\nwrote {args.out / 'search_curves.png'} and {args.out / 'search_results.md'} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


def replay(path: Path, seeds: int, slots: list[int], samples: int | None, startup: float, jobs: int,
           out: Path) -> tuple[dict[str, Any], str]:
    """Every method at every slot count over ``seeds`` search seeds (label-free ones at 4 slots, or
    the most given when 4 is not);
    writes the curves PNG and the markdown tables to ``out``; returns the summary and the text."""
    table = Table.load(path)
    true = table.true
    best = max(true.values())
    threshold = best - TARGET_POINTS / 100
    grid_epochs = len(table.lambdas) * table.epochs
    main_methods, free_methods = methods(samples), label_free_methods(samples)
    free_slots = 4 if 4 in slots else slots[-1]
    work = [(path, m, k, s, startup) for m in main_methods for k in slots for s in range(seeds)]
    work += [(path, m, free_slots, s, startup) for m in free_methods for s in range(seeds)]
    curves: dict[tuple[str, int], list[list[tuple[float, float, float]]]] = defaultdict(list)
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for name, k, _, curve in pool.imap_unordered(run_one, work, chunksize=4):
            curves[(name, k)].append(curve)
    grid_time = {k: float(np.median([c[-1][1] for c in curves[("grid + FIFO", k)]])) for k in slots}

    lines = [f"Replay of `{path.name}` ({table.header.lstrip('# ')}): {len(table.lambdas)} λ × "
             f"{len(table.seeds(table.lambdas[0]))} seeds × {table.epochs} epochs; grid's best seed-mean final linear "
             f"accuracy {100 * best:.2f} % (λ = {max(true, key=true.get):g}); target within {TARGET_POINTS} pt. "
             f"Full grid = {grid_epochs} epochs; {seeds} search seeds; start-up {startup:g} s per trial.", "",
             "| method | slots | epochs to target, median [IQR] | ÷ full grid | sim. time to target, median | ÷ grid's time | reached | epochs used (median) | final true acc % (mean) |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary: dict[str, Any] = {}
    for m in main_methods + free_methods:
        for k in slots:
            cs = curves.get((m.name, k))
            if not cs:
                continue
            e = np.array([first_within(c, threshold, 0) for c in cs])
            t = np.array([first_within(c, threshold, 1) for c in cs])
            q1, med, q3 = np.percentile(e, [25, 50, 75], method="higher")  # inf: never within target
            used = float(np.median([c[-1][0] for c in cs]))
            final = float(np.nanmean([c[-1][2] for c in cs]))
            tmed = float(np.percentile(t, 50, method="higher"))
            summary[f"{m.name} @{k}"] = {"epochs_median": float(med), "ratio": float(med / grid_epochs), "time_median": tmed,
                                         "time_ratio": tmed / grid_time[k], "reached": int(np.isfinite(e).sum()),
                                         "epochs_used": used, "final_true": final}
            lines.append(f"| {m.name} | {k} | {_n(med)} [{_n(q1)}–{_n(q3)}] | {med / grid_epochs:.2f} | "
                         f"{_n(tmed)} s | {tmed / grid_time[k]:.2f} | {int(np.isfinite(e).sum())}/{len(cs)} | "
                         f"{used:.0f} | {100 * final:.2f} |")

    # Label-free scores against the final linear accuracy over the table's configurations.
    rng = np.random.default_rng(0)
    lams = table.lambdas
    acc = np.array([true[l] for l in lams])
    lines += ["", f"Label-free scores vs final linear accuracy over the table's {len(lams)} configurations "
              "(seed-mean at the last epoch; 95 % CI from 2000 bootstrap resamples of the configurations; "
              "for a `min` score a useful ρ is negative):", "",
              "| score | better | Spearman ρ [95 % CI] | picks λ | its true acc % | regret vs grid's best, pt |",
              "|---|---|---|---|---|---|"]
    for score, mode in {"knn_acc": "max", **LABEL_FREE}.items():
        vals = np.array([table.final(l, score) for l in lams])
        rho, lo, hi = spearman_ci(vals, acc, rng)
        finite = [(v if mode == "max" else -v, l) for v, l in zip(vals, lams) if math.isfinite(v)]
        pick = max(finite)[1]
        summary[f"rho {score}"] = {"rho": rho, "lo": lo, "hi": hi, "pick": pick}
        label = "(labelled sweep metric)" if score == "knn_acc" else ""
        lines.append(f"| {score} {label} | {mode} | {rho:+.2f} [{lo:+.2f}, {hi:+.2f}] | {pick:g} | "
                     f"{100 * true[pick]:.2f} | {100 * (best - true[pick]):.2f} |")
    labelled = curves[("TPE + ASHA (default)", free_slots)]
    budget = float(np.median([c[-1][0] for c in labelled]))
    lines += ["", f"Regret (grid's best − true accuracy of the chosen configuration, points; mean [95 % CI over "
              f"search seeds]) of TPE + ASHA at {free_slots} slots driven by each score, at equal compute: the labelled "
              f"sweep's median total ({budget:.0f} epochs) and half of it:", "",
              "| sweep metric | regret @ half | regret @ full |", "|---|---|---|"]
    for name in ["TPE + ASHA (default)"] + [m.name for m in free_methods]:
        cs = curves[(name, free_slots)]
        cells = []
        for b in (budget / 2, budget):
            r = 100 * (best - np.array([at(c, np.array([b]), 0)[0] for c in cs]))
            boots = [np.nanmean(rng.choice(r, len(r))) for _ in range(2000)]
            cells.append(f"{np.nanmean(r):.2f} [{np.nanpercentile(boots, 2.5):.2f}, {np.nanpercentile(boots, 97.5):.2f}]")
        lines.append(f"| {name.replace('TPE + ASHA by ', '').replace('TPE + ASHA (default)', 'knn_acc (labelled)')} "
                     f"| {cells[0]} | {cells[1]} |")
    plot(curves, main_methods, slots, grid_epochs, best, out / "search_curves.png")
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_results.md").write_text(text + "\n")
    summary["grid_epochs"] = grid_epochs
    return summary, text




def plot(curves: dict, main_methods: list[Method], slots: list[int], grid_epochs: int, best: float, path: Path) -> None:
    """Best-so-far true accuracy vs cumulative epochs (top) and simulated wall time (bottom), one
    column per slot count; the line is the mean over search seeds, the band their 2.5–97.5 %."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(slots), figsize=(4.2 * len(slots), 7), sharey=True, squeeze=False)
    for col, k in enumerate(slots):
        for axis, ax in zip((0, 1), axes[:, col]):
            for m in main_methods:
                cs = curves.get((m.name, k))
                if not cs:
                    continue
                top = max(c[-1][axis] for c in cs)
                xs = np.linspace(0, top, 200)
                ys = 100 * np.array([at(c, xs, axis) for c in cs])
                with warnings.catch_warnings():  # before a sweep's first result its curve is NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean = np.nanmean(ys, 0)
                    lo, hi = np.nanpercentile(ys, [2.5, 97.5], 0)
                line, = ax.plot(xs, mean, label=m.name, lw=1.5)
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
            ax.axhline(100 * best - TARGET_POINTS, color="k", ls=":", lw=1)
            if axis == 0:
                ax.axvline(grid_epochs, color="grey", ls="--", lw=0.8)
                ax.set_title(f"{k} concurrent slot{'s' if k > 1 else ''}")
                ax.set_xlabel("cumulative epochs trained")
            else:
                ax.set_xlabel("simulated wall time (s)")
            ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("true acc. of chosen config (%)")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    lo_y = min(np.nanmin(100 * np.array([c[2] for cs in curves.values() for curve in cs for c in curve[:1]])), 100 * best - 3)
    axes[0, 0].set_ylim(max(lo_y, 100 * best - 6), 100 * best + 0.5)
    fig.suptitle("λ search replayed on the digits table: dotted = grid's best − 0.5 pt, dashed = full grid's epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
