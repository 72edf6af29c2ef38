"""The report's command line (``python -m jepa_sweeps.report``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jepa_sweeps.cli import usage_error
from jepa_sweeps.config import ConfigError
from jepa_sweeps.report.build import write_report
from jepa_sweeps.report.export import export_csv
from jepa_sweeps.report.runs import ReportError, load_sweep, open_store, resolve
from jepa_sweeps.storage import report_folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jepa_sweeps.report", description="Sweep report: comparison table, plots, HTML, CSV export."
    )
    parser.add_argument("target", metavar="EXPERIMENT_OR_SPEC", help="MLflow experiment name or sweep spec YAML")
    parser.add_argument("--out", type=Path, help="report folder (default $JEPA_SWEEPS_HOME/reports/<experiment>)")
    parser.add_argument("--csv", type=Path, metavar="DIR", help="also export every metric curve as step,value CSV")
    parser.add_argument("--run", dest="runs", action="append", default=[], metavar="NAME_OR_ID",
                        help="with --csv: only these runs (repeatable)")
    parser.add_argument("--epoch", type=int, help="compare trials at this epoch instead of the common one")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default as the runner: spec, env, home)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        uri, experiment = resolve(args.target, args.tracking_uri)
        client = open_store(uri)
        sweep = load_sweep(client, experiment)
    except (ConfigError, ReportError) as err:
        return usage_error(" ".join(str(err).split()))
    out = args.out or report_folder(experiment)
    report = write_report(client, sweep, out.resolve(), args.epoch)
    print(report.text)
    if args.csv:
        chosen = [t for t in sweep.trials if not args.runs or {t.name, t.run.info.run_id} & set(args.runs)]
        files = export_csv(chosen, args.csv)
        print(f"\ncsv:    {len(files)} files ({len(chosen)} runs) in {args.csv.resolve()}")
    print(f"report: {report.html}")
    return 0
