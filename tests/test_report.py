"""``python -m jepa_sweeps.report`` on synthetic sweeps written the way the runner writes them."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from jepa_sweeps import names
from jepa_sweeps.config import trial_config
from jepa_sweeps.report.build import publish_report, write_report
from jepa_sweeps.report.cli import main
from jepa_sweeps.report.export import export_csv
from jepa_sweeps.report.plots import lambda_plot
from jepa_sweeps.report.runs import common_epoch, load_sweep, resolve
from jepa_sweeps.report.stats import (
    finished_finals,
    importances,
    label_free,
    lambda_groups,
    mean_interval,
)
from jepa_sweeps.storage import safe_name

LAMS = (0.0, 0.05, 0.5)
EPOCHS = 4


def _knn(lam: float, seed: int, epoch: int) -> float:
    """Collapse at λ=0, best at 0.05, a trade-off at 0.5; seeds differ a little."""
    top = {0.0: 0.80, 0.05: 0.97, 0.5: 0.90}[lam]
    return top - 0.3 / epoch + 0.004 * seed


def _add_trial(client: MlflowClient, exp: str, parent: str, name: str, status: str, epochs: int,
               params: dict[str, object], curve: dict[str, list[float]], config: Path | None) -> str:
    run = client.create_run(exp, run_name=name, tags={
        names.PARENT_TAG: parent, names.STATUS_TAG: status, names.TRIAL_TAG: f"t_{name}",
    })
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[
        Metric(key, value, now + step, step) for key, values in curve.items() for step, value in enumerate(values[:epochs], 1)
    ])
    if config is not None:
        client.log_artifact(run_id, str(config))
    if status != "running":
        client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")
    return run_id


def _parent(client: MlflowClient, exp: str, searched: str) -> str:
    run = client.create_run(exp, run_name="sweep-synthetic", tags={names.ROLE_TAG: names.SWEEP_ROLE})
    client.log_batch(run.info.run_id, params=[
        Param(names.METRIC_PARAM, "knn_acc"), Param(names.MODE_PARAM, "max"), Param(names.SEARCHED_PARAM, searched),
    ])
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One SQLite store: a λ × 3-seed sweep (plus stopped, running and failed trials), a sweep with
    nothing finished, an experiment without sweeps, and a two-parameter sweep."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    config = folder / names.CONFIG_ARTIFACT
    config.write_text(json.dumps(trial_config({"encoder": {"name": "cnn", "width": 8}}).model_dump(mode="json")))

    exp = client.create_experiment("synthetic", artifact_location=(folder / "artifacts").as_uri())
    parent = _parent(client, exp, "objective.lam")
    for lam in LAMS:
        for seed in range(3):
            knn = [_knn(lam, seed, e) for e in range(1, EPOCHS + 1)]
            curve = {
                "knn_acc": knn, "linear_acc": [k - 0.02 for k in knn], "rankme": [1.5 + 40 * lam + e for e in range(EPOCHS)],
                "inv_loss": [0.1 / e * (1 - lam) for e in range(1, EPOCHS + 1)],
                "reg_loss": [1.0 + 0.1 * 3 / e for e in range(1, EPOCHS + 1)],
                "val/inv_loss": [0.1 + 0.2, 1e-300, 1 / 3, 2.0 / 7][:EPOCHS],
            }
            params = {"regulariser": "sigreg", "lambda": lam, "objective.lam": lam, "seed": seed, "n_global_views": 2,
                      "views.n_local": 6, "data.name": "digits", "encoder.name": "cnn"}
            _add_trial(client, exp, parent, f"sigreg-lam{lam:.3g}-g2l6-b64-s{seed}", "finished", EPOCHS, params, curve, config)
    stopped = {"knn_acc": [0.5, 0.6, 0.62], "inv_loss": [0.1, 0.05, 0.04], "reg_loss": [1.3, 1.2, 1.1]}
    _add_trial(client, exp, parent, "sigreg-lam0.2-g2l6-b64-s0", "stopped early", 3,
               {"regulariser": "sigreg", "lambda": 0.2, "objective.lam": 0.2, "seed": 0}, stopped, None)
    _add_trial(client, exp, parent, "sigreg-lam0.3-g2l6-b64-s0", "running", 1,
               {"regulariser": "sigreg", "lambda": 0.3, "objective.lam": 0.3, "seed": 0}, {"knn_acc": [0.1]}, None)
    _add_trial(client, exp, parent, "sigreg-lam0.4-g2l6-b64-s0", "failed", 0,
               {"regulariser": "sigreg", "lambda": 0.4, "objective.lam": 0.4, "seed": 0}, {}, None)
    # the resumed-trial case: one step logged twice, order kept
    first = client.search_runs([exp], "attributes.run_name = 'sigreg-lam0.05-g2l6-b64-s0'")[0].info.run_id
    client.log_metric(first, "knn_acc", 0.5, timestamp=int(time.time() * 1000) + 100, step=2)

    idle = client.create_experiment("idle", artifact_location=(folder / "idle").as_uri())
    idle_parent = _parent(client, idle, "objective.lam")
    _add_trial(client, idle, idle_parent, "running-one", "running", 1, {"lambda": 0.1}, {"knn_acc": [0.3]}, None)
    _add_trial(client, idle, idle_parent, "failed-one", "failed", 0, {"lambda": 0.2}, {}, None)

    loose = client.create_experiment("loose", artifact_location=(folder / "loose").as_uri())
    client.create_run(loose, run_name="not-a-sweep")

    two = client.create_experiment("two_params", artifact_location=(folder / "two").as_uri())
    two_parent = _parent(client, two, "objective.lam,views.n_local")
    for i in range(10):
        lam, local = (0.01, 0.1, 0.3)[i % 3], (0, 2, 4, 6, 8)[i % 5]
        _add_trial(client, two, two_parent, f"t{i}", "finished", 2,
                   {"regulariser": "sigreg", "lambda": lam, "objective.lam": lam, "views.n_local": local, "seed": 0},
                   {"knn_acc": [0.5, 0.6 + 0.3 * lam + 0.001 * local]}, None)
    _repeated_sweep(client, client.create_experiment("repeated", artifact_location=(folder / "rep").as_uri()))
    return {"uri": uri, "client": client, "folder": folder, "parent": parent}


def _repeated_sweep(client: MlflowClient, exp: str) -> None:
    """An ASHA sweep of an old release: λ=0 trained three times with seed 0 (copies), λ=0.05 with
    three seeds, λ=0.2 finished, λ=0.5 stopped at epoch 2. The label-free scores are built so that
    ``rankme`` ranks the finished trials exactly as their final linear accuracy (ρ = 1), ``sel_loss``
    exactly reversed (ρ = -1, and lower is better), ``sel_loss_scaled`` is absent at λ=0 and
    ``isotropy`` is never logged."""
    parent = _parent(client, exp, "objective.lam")
    finished = [(0.0, 0, 0.60, 2.0, 0.9, None)] * 3 + [(0.2, 0, 0.90, 5.0, 0.5, 1.0)] + [
        (0.05, s, 0.97 + 0.005 * s, 10.0 + s, 0.3 - 0.01 * s, 0.8 + 0.01 * s) for s in range(3)
    ]
    for i, (lam, seed, acc, rank, loss, scaled) in enumerate(finished):
        knn = 0.5 + 0.45 * acc
        curve = {"knn_acc": [knn - 0.2, knn - 0.1, knn - 0.05, knn], "rankme": [rank] * 4, "sel_loss": [loss] * 4,
                 "final_linear_acc": [acc]}
        if scaled is not None:
            curve["sel_loss_scaled"] = [scaled] * 4
        params = {"regulariser": "sigreg", "lambda": lam, "objective.lam": lam, "seed": seed}
        _add_trial(client, exp, parent, f"t{i}-lam{lam:g}-s{seed}", "finished", 4, params, curve, None)
    _add_trial(client, exp, parent, "stopped-lam0.5-s0", "stopped early", 2,
               {"regulariser": "sigreg", "lambda": 0.5, "objective.lam": 0.5, "seed": 0}, {"knn_acc": [0.4, 0.5]}, None)


@pytest.fixture(scope="module")
def generated(store: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One report run with --csv (the baselines cost a few seconds: once)."""
    out, csv_dir = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("csv")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["synthetic", "--tracking-uri", store["uri"], "--out", str(out), "--csv", str(csv_dir)])
    return {"code": code, "out": out, "csv": csv_dir, "stdout": buffer.getvalue()}


def test_csv_equals_the_metric_history_exactly(store: dict, generated: dict) -> None:
    client: MlflowClient = store["client"]
    assert generated["code"] == 0
    children = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{store['parent']}'")
    expected_files = set()
    for run in children:
        for key in run.data.metrics:
            path = generated["csv"] / f"{safe_name(run.info.run_name)}__{safe_name(key)}.csv"
            expected_files.add(path.name)
            with path.open() as f:
                rows = list(csv.reader(f))
            assert rows[0] == ["step", "value"]
            exported = [(int(s), float(v)) for s, v in rows[1:]]
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            assert exported == [(m.step, m.value) for m in history], (run.info.run_name, key)
    assert {p.name for p in generated["csv"].iterdir()} == expected_files
    assert "sigreg-lam0.05-g2l6-b64-s0__val_inv_loss.csv" in expected_files  # no path separator from "val/inv_loss"


def test_csv_export_of_chosen_runs(store: dict, tmp_path: Path) -> None:
    sweep = load_sweep(store["client"], "synthetic")
    chosen = [t for t in sweep.trials if t.name == "sigreg-lam0.2-g2l6-b64-s0"]
    files = export_csv(chosen, tmp_path)
    assert sorted(p.name for p in files) == [f"sigreg-lam0.2-g2l6-b64-s0__{k}.csv" for k in ("inv_loss", "knn_acc", "reg_loss")]


def test_report_writes_plots_and_a_self_contained_html(generated: dict) -> None:
    out: Path = generated["out"]
    for name in ("lambda.png", "curves.png", "report.html", "ablation.md", "baselines.json"):
        assert (out / name).is_file(), name
    assert (out / "lambda.png").read_bytes().startswith(b"\x89PNG")
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "<img src=\"lambda.png\"" not in page
    # the stopped trial ended at epoch 3, so every trial is compared there
    assert "epoch 3, the last epoch all 10 finished or stopped trials reached" in generated["stdout"]
    baselines = json.loads((out / "baselines.json").read_text())
    (values,) = baselines.values()
    assert set(values) == {"raw pixels", "random-init cnn"} and values["raw pixels"]["knn_acc"] > 0.9
    ablation = (out / "ablation.md").read_text()
    assert "| sigreg | 10 | λ=0.05 |" in ablation


def test_terminal_table_ranks_trials_and_lists_every_one(generated: dict) -> None:
    lines = generated["stdout"].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("run "))
    rows = lines[header + 2 : header + 2 + 12]
    assert rows[0].startswith("sigreg-lam0.05-g2l6-b64-s2") and "finished" in rows[0]
    assert {r.split()[1] for r in rows} >= {"finished", "stopped", "running", "failed"}
    assert rows[-1].split()[0] in {"sigreg-lam0.3-g2l6-b64-s0", "sigreg-lam0.4-g2l6-b64-s0"}


def test_interval_is_the_t_interval() -> None:
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert mean_interval([1.0, 3.0]) == (2.0, None)


def test_importances_need_two_varied_parameters(store: dict) -> None:
    found, reason = importances(load_sweep(store["client"], "two_params"), 2)
    assert set(found) == {"objective.lam", "views.n_local"} and reason == ""
    assert sum(found.values()) == pytest.approx(1.0)
    assert found["objective.lam"] > found["views.n_local"]
    found, reason = importances(load_sweep(store["client"], "synthetic"), 3)
    assert found == {} and "1 searched parameter" in reason


def test_varied_views_get_an_effects_plot(store: dict, tmp_path: Path) -> None:
    report = write_report(store["client"], load_sweep(store["client"], "two_params"), tmp_path)
    assert (tmp_path / "effects.png").is_file() and (tmp_path / "importance.png").is_file()
    assert "baselines: no trial_config.json" in report.text  # said, not silently skipped


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_experiment", "no MLflow experiment named 'no_such_experiment'"),
        ("idle", "experiment 'idle' has no finished runs"),
        ("loose", "experiment 'loose' has no sweep runs"),
        ("missing_spec.yaml", "spec file 'missing_spec.yaml': not found"),
    ],
)
def test_nothing_to_report_exits_2_with_one_line(store: dict, target: str, message: str, capsys) -> None:
    assert main([target, "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_missing_store_is_not_created(tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["anything", "--tracking-uri", uri]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not (tmp_path / "none.db").exists()


def test_a_spec_names_the_experiment_and_store(store: dict, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: synthetic\nmlflow: {{tracking_uri: '{store['uri']}'}}\n")
    assert resolve(str(spec), None) == (store["uri"], "synthetic")
    assert resolve("synthetic", store["uri"]) == (store["uri"], "synthetic")


def test_publish_attaches_the_report_to_the_parent_run(store: dict, generated: dict) -> None:
    client: MlflowClient = store["client"]
    out = generated["out"]  # reuses the cached baselines
    line = publish_report(client, store["parent"], out)
    assert line.startswith("report:      ") and "report.html" in line, line
    artifacts = {a.path for a in client.list_artifacts(store["parent"], "report")}
    assert {"report/report.html", "report/lambda.png", "report/curves.png", "report/ablation.md"} <= artifacts


def test_copies_of_one_configuration_and_seed_draw_no_interval(store: dict) -> None:
    sweep = load_sweep(store["client"], "repeated")
    epoch = common_epoch(sweep)
    assert epoch == 2  # the ASHA-stopped trial sets the comparison epoch
    by_lam = {g.lam: g for g in lambda_groups(sweep, sweep.comparable, "knn_acc", epoch)}
    copies = by_lam[0.0]
    assert [(p.seed, p.copies) for p in copies.points] == [("0", 3)] and copies.ci is None
    seeds = by_lam[0.05]
    assert sorted(p.seed for p in seeds.points) == ["0", "1", "2"] and seeds.ci is not None
    assert [p.value for p in seeds.points] == pytest.approx([0.5 + 0.45 * (0.97 + 0.005 * s) - 0.1 for s in range(3)])
    assert by_lam[0.5].ci is None and by_lam[0.2].ci is None


def test_finished_trials_final_values_are_shown(store: dict, tmp_path: Path) -> None:
    sweep = load_sweep(store["client"], "repeated")
    finals = finished_finals(sweep.comparable, "knn_acc")
    assert len(finals) == 7 and {f.epoch for f in finals} == {4}  # the stopped trial is not among them
    assert max(f.value for f in finals) == pytest.approx(0.5 + 0.45 * 0.98)
    report = write_report(store["client"], sweep, tmp_path)
    assert "knn_acc final (finished)" in report.text and f"{0.5 + 0.45 * 0.98:.4f} @4" in report.text
    assert "3 (" not in report.text.split("regulariser ablation:")[1].split("label-free")[0]  # λ=0.05: 3 seeds, no copies
    assert lambda_plot(sweep, 2, {}, tmp_path / "lambda.png").is_file()


def test_label_free_section_on_a_known_ranking(store: dict) -> None:
    checks, skipped = label_free(load_sweep(store["client"], "repeated"))
    found = {c.score: c for c in checks}
    assert set(found) == {"rankme", "sel_loss", "sel_loss_scaled"}
    assert found["rankme"].rho == pytest.approx(1.0) and found["rankme"].trials == 7
    assert found["sel_loss"].rho == pytest.approx(-1.0)
    assert found["rankme"].high == pytest.approx(1.0) and found["rankme"].low == pytest.approx(1.0)
    for score in ("rankme", "sel_loss"):  # lower loss / higher rank both pick the best trial
        assert found[score].picked.name == "t6-lam0.05-s2"
        assert found[score].picked_acc == pytest.approx(0.98) == found[score].best_acc
    assert found["sel_loss_scaled"].trials == 4 and found["sel_loss_scaled"].picked.name == "t4-lam0.05-s0"
    assert found["sel_loss_scaled"].picked_acc == pytest.approx(0.97)
    assert skipped == ["isotropy: skipped, logged by 0 finished trial(s), need at least 3"]


def test_label_free_section_skips_with_too_few_finished_trials(store: dict) -> None:
    checks, skipped = label_free(load_sweep(store["client"], "two_params"))
    assert checks == [] and skipped == ["skipped: 0 finished trial(s) with a final linear accuracy, need at least 3"]
