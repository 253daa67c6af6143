"""Ray job submission: run a usam-ray command on a cluster through its head's dashboard.

``submit_job`` ships the working directory (the usam-ray source tree, or any folder holding
``jobs/``) with a runtime environment, and starts ``python jobs/<command>_job.py``, which runs the
same CLI command with the configuration resolved here (passed in ``$USAM_RAY_JOB_CONFIG``, so a
bad setting fails here, before anything is submitted). The other functions wrap
``ray.job_submission.JobSubmissionClient`` for ``usam-ray jobs``.

Nothing here imports ray at module level: ``usam-ray --help`` stays free of torch and ray.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

COMMANDS = ("run", "embed", "pseudo", "label", "refine", "eval")
CONFIG_ENV = "USAM_RAY_JOB_CONFIG"
SUBMISSION_ENV = "USAM_RAY_SUBMISSION_ID"
ADDRESS_ENV = "USAM_RAY_JOBS_ADDRESS"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# never shipped: version control, environments, build outputs, local runs
EXCLUDES = [".git", ".venv", "venv", ".gpu", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis",
            "build", "dist"]
# exit codes of every stage command (and so of the job's driver)
EXIT_COMPLETE, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
OUTCOMES = {EXIT_COMPLETE: "complete", EXIT_FAILED: "failed", EXIT_USAGE: "bad input", EXIT_INCOMPLETE: "incomplete"}


class SubmissionError(ValueError):
    """The job cannot be submitted as asked (working directory, runtime env, address)."""


@dataclass(frozen=True)
class JobRow:
    """One job as ``usam-ray jobs`` shows it.

    Attributes:
        id (str): the submission id.
        status (str): PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED (Ray's).
        outcome (str): usam-ray's reading of the driver's exit code (complete, incomplete, failed,
            bad input) once it ended, else the status in lower case.
        command (str), out (str): the usam-ray command and run directory (from the job's metadata;
            empty for jobs not submitted by usam-ray).
        start, end (float | None): epoch seconds.
        message (str): Ray's message.
    """

    id: str
    status: str
    outcome: str
    command: str
    out: str
    start: Optional[float]
    end: Optional[float]
    message: str


def dashboard_address(address: Optional[str] = None) -> str:
    """The dashboard URL to talk to: ``address``, ``$USAM_RAY_JOBS_ADDRESS``, ``$RAY_ADDRESS`` when it
    is an http(s) URL (as ``ray job`` reads it), else ``http://127.0.0.1:8265``."""
    for value in (address, os.environ.get(ADDRESS_ENV)):
        if value:
            return value if "://" in value else f"http://{value}"
    ray_address = os.environ.get("RAY_ADDRESS", "")
    return ray_address if ray_address.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def source_tree() -> Optional[Path]:
    """The folder this usam-ray was imported from when it is a source checkout (holds ``jobs/``)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "jobs").is_dir() else None


def entrypoint(command: str) -> str:
    """The job's shell command for ``command``: its script in ``jobs/``."""
    return f"python jobs/{command}_job.py"


def job_runtime_env(command: str, config_yaml: str, working_dir: Path, runtime_env_file: Optional[Path],
                    submission_id: str) -> dict[str, Any]:
    """The runtime environment of a submission: ``runtime_env_file`` (YAML: pip, env_vars, …; default
    ``WORKING_DIR/jobs/runtime_env.yaml`` when present), plus ``working_dir``, the default
    ``excludes``, and the resolved configuration and submission id as environment variables.

    Raises:
        SubmissionError: the working directory lacks ``jobs/<command>_job.py``, or the file is not
            a YAML mapping.
    """
    import yaml

    if command not in COMMANDS:
        raise SubmissionError(f"submit: cannot submit {command!r}: one of {', '.join(COMMANDS)}")
    working_dir = Path(working_dir)
    script = working_dir / "jobs" / f"{command}_job.py"
    if not script.is_file():
        raise SubmissionError(f"--working-dir {working_dir}: no {script.relative_to(working_dir)} (ship the usam-ray "
                              "source tree, or a folder with its jobs/)")
    if runtime_env_file is None and (working_dir / "jobs" / "runtime_env.yaml").is_file():
        runtime_env_file = working_dir / "jobs" / "runtime_env.yaml"
    env: dict[str, Any] = {}
    if runtime_env_file is not None:
        path = Path(runtime_env_file)
        if not path.is_file():
            raise SubmissionError(f"--runtime-env {path}: no such file")
        env = yaml.safe_load(path.read_text()) or {}
        if not isinstance(env, dict):
            raise SubmissionError(f"--runtime-env {path}: not a YAML mapping (pip, env_vars, working_dir, …)")
    env.setdefault("working_dir", str(working_dir))
    env["excludes"] = sorted(set(env.get("excludes", [])) | set(EXCLUDES))
    env["env_vars"] = {**{k: str(v) for k, v in (env.get("env_vars") or {}).items()}, CONFIG_ENV: config_yaml,
                       SUBMISSION_ENV: submission_id}
    return env


def new_submission_id(command: str) -> str:
    """``usam-ray-<command>-<12 hex>``: what ``jobs`` and run.json's ``by.job`` show."""
    return f"usam-ray-{command}-{uuid.uuid4().hex[:12]}"


def _client(address: Optional[str]):
    import logging

    from ray.job_submission import JobSubmissionClient

    if not os.environ.get("USAM_RAY_VERBOSE"):  # packaging chatter about every ignored file, the log socket
        for name in [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]:
            logging.getLogger(name).setLevel(logging.ERROR)
    url = dashboard_address(address)
    try:
        return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError) as exc:
        raise SubmissionError(f"--address {url}: no Ray dashboard answers there ({' '.join(str(exc).split())[:200]})"
                              ) from exc


def submit_job(command: str, config_yaml: str, out: str, address: Optional[str] = None,
               working_dir: Optional[Path] = None, runtime_env_file: Optional[Path] = None,
               submission_id: Optional[str] = None) -> str:
    """Submit ``command`` with the resolved configuration ``config_yaml``; returns the submission id.

    Args:
        command (str): one of ``COMMANDS``.
        config_yaml (str): the configuration as YAML (``load_config`` output, dumped).
        out (str): the run directory it writes (job metadata, for ``jobs list``).
        address (str | None): the dashboard (see ``dashboard_address``).
        working_dir (Path | None): the folder to ship (default: the source tree, else the current folder).
        runtime_env_file (Path | None): see ``job_runtime_env``.

    Raises:
        SubmissionError: see ``job_runtime_env``; the dashboard cannot be reached.
    """
    working_dir = Path(working_dir) if working_dir is not None else (source_tree() or Path.cwd())
    submission_id = submission_id or new_submission_id(command)
    env = job_runtime_env(command, config_yaml, working_dir, runtime_env_file, submission_id)
    client = _client(address)
    deadline = time.time() + 120
    while True:  # a head that just started has no job agent for a few seconds: Ray answers 500, "try again later"
        try:
            return client.submit_job(entrypoint=entrypoint(command), runtime_env=env, submission_id=submission_id,
                                     metadata={"usam_ray_command": command, "usam_ray_out": out})
        except RuntimeError as exc:
            if "try again later" not in str(exc) or time.time() > deadline:
                raise SubmissionError(f"{dashboard_address(address)} refused the job: {' '.join(str(exc).split())[:300]}"
                                      ) from exc
            time.sleep(2)


def outcome(status: str, exit_code: Optional[int]) -> str:
    """usam-ray's reading of a job's end: the driver's exit code (``OUTCOMES``), or the status."""
    if status in ("SUCCEEDED", "FAILED") and exit_code is not None:
        return OUTCOMES.get(int(exit_code), f"failed (exit {exit_code})")
    return status.lower()


def exit_code(outcome_: str) -> int:
    """The exit code an ended job's ``outcome`` stands for (``OUTCOMES`` read backwards; 1 otherwise)."""
    return {v: k for k, v in OUTCOMES.items()}.get(outcome_, EXIT_FAILED)


def _row(info) -> JobRow:
    status = str(getattr(info.status, "value", info.status))
    meta = info.metadata or {}
    start = info.start_time / 1000 if info.start_time else None
    end = info.end_time / 1000 if info.end_time else None
    return JobRow(info.submission_id or info.job_id or "", status, outcome(status, info.driver_exit_code),
                  meta.get("usam_ray_command", ""), meta.get("usam_ray_out", ""), start, end, info.message or "")


def list_jobs(address: Optional[str] = None) -> list[JobRow]:
    """Every submitted job the cluster remembers, oldest first."""
    client = _client(address)
    return sorted((_row(j) for j in client.list_jobs() if j.submission_id), key=lambda r: r.start or 0)


def _known(client, job: str, address: Optional[str]) -> JobRow:
    """``job``'s row through ``client``.

    Raises:
        SubmissionError: no such job.
    """
    try:
        return _row(client.get_job_info(job))
    except RuntimeError as exc:
        raise SubmissionError(f"job {job}: not found at {dashboard_address(address)}") from exc


def job_status(job: str, address: Optional[str] = None) -> JobRow:
    """One job's row.

    Raises:
        SubmissionError: no such job.
    """
    return _known(_client(address), job, address)


def job_logs(job: str, address: Optional[str] = None) -> str:
    """The job's output so far (its driver's stdout and stderr)."""
    client = _client(address)
    _known(client, job, address)
    return client.get_job_logs(job)


def follow_logs(job: str, address: Optional[str] = None) -> Iterator[str]:
    """The job's output as it comes, until the job ends (chunks of text)."""
    import asyncio

    client = _client(address)
    _known(client, job, address)
    stream = client.tail_job_logs(job)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()


def stop_job(job: str, address: Optional[str] = None) -> bool:
    """Ask the cluster to stop ``job``; False when it had already ended."""
    client = _client(address)
    _known(client, job, address)
    return bool(client.stop_job(job))
