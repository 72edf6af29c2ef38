"""The report's command line (``python -m jepa_sweeps.report``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlparse

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


def check_args(args: argparse.Namespace) -> None:
    """What the command line names, checked before anything is read or written: a half-written
    report or a client retrying an unreachable server for minutes helps no one. ``ConfigError``."""
    from pydantic import ValidationError

    from jepa_sweeps.config import describe
    from jepa_sweeps.preflight import writable
    from jepa_sweeps.spec import MLflowSpec

    if args.epoch is not None and args.epoch < 1:
        raise ConfigError(f"--epoch {args.epoch}: epochs count from 1")
    for flag, folder in (("--out", args.out), ("--csv", args.csv)):
        if folder is not None:
            problem = f"{folder} is not a folder" if folder.exists() and not folder.is_dir() else writable(folder.resolve())
            if problem:
                raise ConfigError(f"{flag} {folder}: {problem}")
    try:
        MLflowSpec(tracking_uri=args.tracking_uri)
    except ValidationError as err:
        raise ConfigError(describe(err, prefix="--tracking-uri", limit=1)) from None


def check_store(uri: str) -> None:
    """A server answers within ≈10 s, a database URI has its driver and server; each request
    after that is tried once more at most (MLflow's own retries take minutes)."""
    from jepa_sweeps.preflight import check_tracking

    if urlparse(uri).scheme != "sqlite":  # read-only here: open_store checks the file exists
        check_tracking(uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def main(argv: list[str] | None = None) -> int:
    from jepa_sweeps.redaction import redact_logs

    args = parse_args(argv)
    redact_logs()
    try:
        check_args(args)
        uri, experiment = resolve(args.target, args.tracking_uri)
        check_store(uri)
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
