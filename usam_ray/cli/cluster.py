"""``usam-ray submit``, ``usam-ray jobs …`` and ``usam-ray status``: running on a cluster through Ray
job submission, and checking what a run directory holds. Registered on the main app by
``usam_ray.cli``; like it, imports neither torch nor ray until a command runs."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..config import CONFIGS, detect_config_kind, load_config
from . import SetOpt, _err, _fail, _user_errors, app

jobs_app = typer.Typer(help="Jobs submitted to a Ray cluster: list, status, logs, stop.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")

AddressOpt = typer.Option(None, "--address", metavar="URL",
                          help="The cluster head's dashboard, e.g. http://HEAD:8265 [default: $USAM_RAY_JOBS_ADDRESS, "
                          "$RAY_ADDRESS when it is http(s)://…, else http://127.0.0.1:8265].")
# the fields of each command's configuration that name files the cluster must see
PATH_FIELDS = ("images", "out", "head", "labels", "embeddings", "pseudo", "lro_out", "classes_file", "coarse_labels")
REQUIRED_FIELDS = {"run": ("images", "classes", "out"), "embed": ("images", "out"),
                   "pseudo": ("images", "classes", "out"), "label": ("head", "out"),
                   "refine": ("labels", "images", "out"), "eval": ("labels", "gt")}


def _cluster_paths(cfg, command: str) -> None:
    """Fail before submitting when a required setting is missing or a path is relative (it would
    resolve inside the job's temporary copy of the working directory, and be lost with it)."""
    missing = [f for f in REQUIRED_FIELDS[command] if getattr(cfg, f, None) is None]
    if missing:
        _fail(f"submit: the {command} configuration needs {', '.join(missing)} (in CONFIG or --set)")
    for name in PATH_FIELDS:
        value = getattr(cfg, name, None)
        if value is None:
            continue
        text = str(value).split(":", 1)[1] if str(value).startswith("classes:") else str(value)
        if "://" not in text and not os.path.isabs(text):
            _fail(f"submit: {name} = {text} is a relative path; on a cluster give an absolute path on storage every "
                  "node sees (or a URI)")


@app.command()
def submit(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML configuration of the command to run (configs/)."),
    command: Optional[str] = typer.Option(None, "--command", metavar="CMD",
                                          help="run, embed, pseudo, label, refine or eval [default: the kind CONFIG holds]."),
    address: Optional[str] = AddressOpt,
    runtime_env: Optional[Path] = typer.Option(
        None, "--runtime-env", metavar="FILE",
        help="Runtime env YAML (pip, env_vars, …) [default: WORKING_DIR/jobs/runtime_env.yaml]."),
    working_dir: Optional[Path] = typer.Option(
        None, "--working-dir", metavar="DIR",
        help="Folder shipped to the cluster; must hold jobs/ [default: this usam-ray's source tree, else .]."),
    sets: Optional[List[str]] = SetOpt,
    wait: bool = typer.Option(False, "--wait", help="Follow the job's output until it ends and exit with its code."),
) -> None:
    """Run a usam-ray command on a Ray cluster through its job server (the head's dashboard).

    The configuration is resolved and checked here, then shipped with the working directory;
    the job runs `python jobs/<command>_job.py`, the same command as the CLI. Prints the job id.
    Exit codes of the job (and of every stage command): 0 complete, 3 incomplete (re-submit to
    continue), 2 bad input, 1 failed.
    """
    import yaml

    from ..submission import COMMANDS, SubmissionError, submit_job

    try:
        kind = command or detect_config_kind(config)
        if kind not in COMMANDS:
            _fail(f"submit: {config} holds a {kind} configuration; submit runs {', '.join(COMMANDS)} "
                  "(name one with --command)")
        cfg = load_config(CONFIGS[kind], config, sets)
        _cluster_paths(cfg, kind)
        text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        out = str(getattr(cfg, "out", None) or getattr(cfg, "labels", ""))
        job = submit_job(kind, text, out, address, working_dir, runtime_env)
    except (SubmissionError, *_user_errors()) as exc:
        _fail(str(exc))
    typer.echo(job)
    _err(f"submitted usam-ray {kind} (run directory {out}); follow it: usam-ray jobs logs {job} --follow; "
         f"check the run: usam-ray status {out}")
    if wait:
        raise typer.Exit(_wait(job, address))


def _wait(job: str, address: Optional[str]) -> int:
    """Stream the job's output, then return its exit code (the driver's, or 1)."""
    from ..submission import exit_code, follow_logs, job_status

    for chunk in follow_logs(job, address):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    row = job_status(job, address)
    while row.status in ("PENDING", "RUNNING"):  # the log stream can end a moment before the status
        time.sleep(0.5)
        row = job_status(job, address)
    _err(f"job {job}: {row.status} — {row.outcome}")
    return exit_code(row.outcome)


def _when(t: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@jobs_app.command("list")
def jobs_list(address: Optional[str] = AddressOpt,
              as_json: bool = typer.Option(False, "--json", help="One JSON object per job.")) -> None:
    """Jobs the cluster remembers, oldest first: id, status, outcome, command, run directory, times."""
    from dataclasses import asdict

    from ..submission import SubmissionError, list_jobs

    try:
        rows = list_jobs(address)
    except SubmissionError as exc:
        _fail(str(exc))
    for r in rows:
        if as_json:
            typer.echo(json.dumps(asdict(r)))
        else:
            typer.echo(f"{r.id:34s} {r.status:9s} {r.outcome:11s} {r.command or '-':6s} {_when(r.start)}  "
                       f"{_when(r.end)}  {r.out or '-'}")
    if not rows and not as_json:
        typer.echo("no jobs")


@jobs_app.command("status")
def jobs_status(job: str = typer.Argument(..., metavar="JOB"), address: Optional[str] = AddressOpt) -> None:
    """One job: status, outcome, times, Ray's message. Exit 0 complete, 3 not finished or incomplete, 1 failed."""
    from ..submission import EXIT_COMPLETE, EXIT_FAILED, EXIT_INCOMPLETE, SubmissionError, job_status

    try:
        r = job_status(job, address)
    except SubmissionError as exc:
        _fail(str(exc))
    typer.echo(f"{r.id}: {r.status} ({r.outcome})\n  command {r.command or '-'}, run directory {r.out or '-'}\n"
               f"  started {_when(r.start)}, ended {_when(r.end)}\n  {r.message}")
    raise typer.Exit(EXIT_COMPLETE if r.outcome == "complete" else
                     EXIT_INCOMPLETE if r.outcome in ("incomplete", "pending", "running") else EXIT_FAILED)


@jobs_app.command("logs")
def jobs_logs(job: str = typer.Argument(..., metavar="JOB"), address: Optional[str] = AddressOpt,
              follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends.")) -> None:
    """The job's output (each stage's progress and summary lines)."""
    from ..submission import SubmissionError, follow_logs, job_logs

    try:
        if follow:
            for chunk in follow_logs(job, address):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        else:
            sys.stdout.write(job_logs(job, address))
    except SubmissionError as exc:
        _fail(str(exc))


@jobs_app.command("stop")
def jobs_stop(job: str = typer.Argument(..., metavar="JOB"), address: Optional[str] = AddressOpt) -> None:
    """Stop a running job. Shards already written stay; re-submitting continues from them."""
    from ..submission import SubmissionError, stop_job

    try:
        stopped = stop_job(job, address)
    except SubmissionError as exc:
        _fail(str(exc))
    typer.echo(f"{job}: {'stop requested' if stopped else 'had already ended'}")


@app.command()
def status(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory."),
    as_json: bool = typer.Option(False, "--json", help="The status as one JSON object."),
) -> None:
    """What every stage of a run directory has done: rows, errors, shards, fingerprints, complete
    or not, by whom and when — from run.json and the shards themselves.

    Exit 0 when every stage is complete, 3 when one is not (incomplete, running, interrupted or
    conflicting), 2 when RUN is not a run directory.
    """
    from dataclasses import asdict

    from ..data.status import COMPLETE, format_status, run_status
    from ..submission import EXIT_COMPLETE, EXIT_INCOMPLETE, EXIT_USAGE

    try:
        st = run_status(run)
    except FileNotFoundError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"run": st.run, "state": st.state, "stages": [asdict(s) for s in st.stages]}))
    else:
        typer.echo(format_status(st))
    if st.state == "empty":
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(EXIT_COMPLETE if st.state == COMPLETE else EXIT_INCOMPLETE)


def job_main(command: str, argv: Optional[List[str]] = None) -> int:
    """The body of ``jobs/<command>_job.py``: run ``usam-ray <command>`` with the configuration
    ``usam-ray submit`` resolved (``$USAM_RAY_JOB_CONFIG``) plus ``argv``; returns the exit code."""
    import tempfile

    from ..submission import CONFIG_ENV, EXIT_USAGE
    from . import main

    import importlib

    try:  # load torch's native libraries before Ray's threads start: a job driver that imported torch
        importlib.import_module("torch")  # only after Ray Data ran died in MKL's loader ("Cannot load libtorch_cpu.so")
    except ImportError:  # a driver-only image without torch: the stages that need it say so
        pass
    text = os.environ.get(CONFIG_ENV)
    if not text:
        _err(f"error: ${CONFIG_ENV} is not set: submit this job with `usam-ray submit CONFIG`")
        return EXIT_USAGE
    with tempfile.NamedTemporaryFile("w", suffix=f"-{command}.yaml", delete=False) as fh:
        fh.write(text)
    try:
        config = [fh.name] if command == "run" else ["--config", fh.name]  # run takes CONFIG as its argument
        return main([command, *config, *(sys.argv[1:] if argv is None else argv)])
    finally:
        os.unlink(fh.name)
