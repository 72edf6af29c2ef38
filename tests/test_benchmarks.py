"""Smoke tests of the benchmark suite at tiny sizes: every code path runs and yields well-formed
rows. No timing is asserted (timings belong in ``python -m benchmarks.run``, not in tests)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import requests

from benchmarks import run as bench
from benchmarks.common import StealMeter
from benchmarks.overhead import RequestCounter, overhead_rows, throughput_row
from benchmarks.plain import Run, first_epoch_start
from benchmarks.sweeps import search_row
from jepa_sweeps.config import TrialConfig

TINY = {
    "overhead": {"epochs": 2, "rounds": 1, "baseline_after": False},
    "pipeline": {"batch": 8, "batches": 1, "reps": 1},
    "step": {"nano_batch": 2, "nano_reps": 1, "cnn_reps": 1, "objective_reps": 1, "matmul_n": 64,
             "nano_overrides": {"dim": 32, "depth": 1, "heads": 2}},
    "sweeps": {"seeds": 2},
}


def _check(row: dict) -> None:
    assert row["shown"] and row["target"] and row["value"] is not None
    assert row["passed"] in (True, False, None)


def test_cli_runs_the_in_process_rows_and_merges_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "results.json"
    earlier = {"id": "5", "name": "kept from an earlier run", "shown": "0.4", "target": "≤ 0.5", "passed": True,
               "value": 0.4, "notes": [], "date": "2026-01-01T00:00:00+00:00", "mode": "full", "load_average": [0.5]}
    out.write_text(json.dumps({"rows": [earlier]}))
    monkeypatch.setattr(bench, "QUICK", TINY)
    bench.main(["--quick", "--only", "2", "3", "4", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["id"] for r in saved["rows"]] == ["2", "2b", "3", "4", "5"]
    for row in saved["rows"][:4]:
        _check(row)
        assert row["mode"] == "quick"
    assert set(saved["rows"][2]["details"]["vit_nano"]["overhead"]) == {"sigreg", "vicreg", "infonce", "ema"}
    assert saved["machine"]["cores"] and saved["machine"]["torch"]
    assert "| 2b |" in bench.markdown(saved) and "kept from an earlier run" in bench.markdown(saved)
    printed = capsys.readouterr().out
    assert "SIGReg overhead" in printed and "≥ 2×" in printed


@pytest.mark.slow
@pytest.mark.ray
def test_ray_trial_rows_against_a_real_mlflow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One round: a sweep of two 2-epoch Ray trials and one plain torch.distributed run: rows 1, 1b,
    1c and 6."""
    monkeypatch.setenv("JEPA_SWEEPS_HOME", str(tmp_path))
    rows = {r.id: r for r in overhead_rows(workdir=tmp_path, **TINY["overhead"])}
    assert set(rows) == {"1", "1b", "1c", "6"}
    assert len(rows["1c"].details["ray_images_per_cpu_s"]) == 2 and rows["1c"].value > 0
    assert [len(r) for r in rows["1"].details["ray_images_per_s"]] == [2, 2]
    assert rows["1"].value > 0 and rows["1"].details["epochs_compared"] == {"ray": "2/2", "plain": "1/1"}
    first, later = rows["1b"].details["timeline_first_s"], rows["1b"].details["timeline_later_s"]
    assert 0 < first["started"] < first["first_epoch_begins"] < first["last_report"] < first["completed"]
    assert 0 < later["started"] < later["first_epoch_begins"] < later["last_report"] < later["completed"]
    assert "ready:ImplicitFunc" not in later  # the second trial ran on the first one's driver (reuse_actors)
    assert rows["6"].details["per_report"] == [1, 1, 1, 1]  # the product's batching, not a timing
    assert rows["6"].details["server_access_log"]["POST /api/2.0/mlflow/runs/log-batch"] >= 2


def test_first_epoch_start_recovers_the_begin_time() -> None:
    # epochs of 10 s training, 2 s between an epoch's end and its report, the last with a 5 s probe
    train = [12.0, 10.0, 10.0, 10.0]
    reports, t = [], 100.0
    for i, seconds in enumerate(train):
        t += seconds + (7.0 if i == len(train) - 1 else 2.0)
        reports.append(t)
    assert first_epoch_start(reports, train) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        first_epoch_start(reports[:1], train[:1])


def steal_meter(stolen: dict[int, int], seconds: int = 40) -> StealMeter:
    """A meter with /proc/stat-like samples each second: 100 ticks a second, ``stolen[t]`` of them
    stolen during second t."""
    meter, ticks = StealMeter(), [0] * 10
    for t in range(seconds):
        meter.samples.append((float(t), list(ticks)))
        ticks[0] += 100 - stolen.get(t, 0)
        ticks[7] += stolen.get(t, 0)
    return meter


def test_epochs_slowed_by_the_host_are_left_out_of_both_sides() -> None:
    """Row 1 compares only epochs during which the hypervisor stole ≤ 1 % of the CPU."""
    meter = steal_meter({13: 20, 14: 20, 15: 20})
    assert meter.fraction(13, 16) == pytest.approx(0.2) and StealMeter().fraction(0, 1) == 0.0
    # 1000 images an epoch; a steady epoch trains right after the previous report, for 1000 / speed s
    plain = Run(0.0, [0.0, 10.0, 20.0, 30.0], [250.0, 400.0, 400.0, 400.0], 1000)
    slowed = Run(0.0, [12.0, 22.0, 32.0], [250.0, 200.0, 390.0], 1000)  # epoch 2 trains in 12–17 s
    cfg = TrialConfig()
    row = throughput_row([[slowed]], [plain], cfg, meter)
    assert row.details["epochs_compared"] == {"ray": "1/2", "plain": "3/3"}
    assert row.value == pytest.approx(390 / 400) and row.passed is True
    assert row.details["ratio_unfiltered"] == pytest.approx(295 / 400)
    assert row.details["interval_95"] == [pytest.approx(390 / 400)] * 2  # one run a side: nothing to resample
    clean = Run(0.0, [0.0, 10.0, 20.0], [250.0, 300.0, 390.0], 1000)
    row = throughput_row([[slowed], [clean]], [plain, plain], cfg, meter)  # plain, Ray, plain, Ray as in a run
    low, high = row.details["interval_95"]
    # draws of {clean, clean} pool 300, 390, 300, 390; every other draw has median 390
    assert (low, high) == (pytest.approx(345 / 400), pytest.approx(390 / 400)) and row.value == high
    # clean's epoch 2 trains in 0–3.3 s, its epoch 3 in 10–12.6 s: both before the burst
    assert throughput_row([[clean]], [plain], cfg, meter).details["epochs_compared"]["ray"] == "2/2"
    # when the host takes its share all along, no epoch is better than another: all are compared
    everywhere = steal_meter({t: 5 for t in range(40)})
    assert throughput_row([[slowed]], [plain], cfg, everywhere).details["epochs_compared"]["ray"] == "2/2"
    # nor when one side was hit throughout and the other never
    only_ray = steal_meter({t: 20 for t in [*range(12, 17), *range(22, 25)]})
    assert throughput_row([[slowed]], [plain], cfg, only_ray).details["epochs_compared"] == {"ray": "2/2", "plain": "3/3"}


def test_request_counter_attributes_requests_to_phases() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/api/x"
    counter = RequestCounter()
    try:
        with counter.installed():
            requests.get(url, timeout=10)  # outside any phase: not counted
            for n in (1, 2):
                with counter.phase("result"):
                    for _ in range(n):
                        requests.get(url, timeout=10)
    finally:
        server.shutdown()
    assert counter.per_call["result"] == [1, 2]
    assert counter.requests == {("result", "GET api/x"): 3}


def test_search_row_reads_the_default_method_at_four_slots() -> None:
    summary = {"grid_epochs": 170,
               "TPE + ASHA (default) @4": {"ratio": 40 / 170, "reached": 20, "epochs_median": 40, "epochs_used": 60},
               "TPE + ASHA (default) @1": {"ratio": 80 / 170, "reached": 18, "epochs_median": 80, "epochs_used": 70}}
    row = search_row(summary, seeds=20)
    assert row.id == "5" and row.value == pytest.approx(40 / 170) and row.passed is True
    assert "0.47× the grid" in row.notes[0]


def test_precision_row_times_every_precision_of_the_step() -> None:
    """Row 8 at tiny sizes: one step per precision and round; on a CPU reported without a verdict."""
    from benchmarks.precision import PRECISIONS, precision_row

    row = precision_row(batch=4, reps=1, device="cpu", nano_overrides={"dim": 32, "depth": 1, "heads": 2})
    assert row.id == "8" and row.passed is None and row.value > 0
    assert set(row.details["images_per_s"]) == set(PRECISIONS) and all(v > 0 for v in row.details["images_per_s"].values())
    assert row.shown == f"{row.value:.2f}×" and "fp16" in row.notes[0]


@pytest.mark.slow
def test_makespan_row_replays_the_sweeps_trials_as_plain_processes(tmp_path: Path) -> None:
    """Row 7 at its smallest: a 2-trial lambda sweep, then the same trials, each stopped after the
    epochs the sweep trained it, as plain gloo runs."""
    from benchmarks.makespan import makespan_row

    row = makespan_row(tmp_path, ("num_samples=2", "epochs=2", "points=[]"))
    assert row.id == "7" and row.value > 0
    assert row.details["epochs"] == [2, 2] and row.details["workers"] == [2, 2]
    assert len(row.details["plain_s"]) == 2 and all(s > 0 for s in row.details["plain_s"])
