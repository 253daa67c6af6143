"""`usam-ray submit`'s checks before anything is sent, and the runtime env it builds (no cluster:
tests/test_cluster.py submits to a real one)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from usam_ray.submission import (
    COMMANDS, CONFIG_ENV, DEFAULT_ADDRESS, SUBMISSION_ENV, SubmissionError, dashboard_address, job_runtime_env, outcome,
    source_tree,
)

ROOT = Path(__file__).parents[1]
USAM_RAY = str(Path(sys.executable).parent / "usam-ray")


def test_the_runtime_env_ships_the_tree_with_the_config_and_merges_the_users_file(tmp_path):
    env = job_runtime_env("embed", "images: /x\n", ROOT, None, "usam-ray-embed-1")
    assert env["working_dir"] == str(ROOT) and env["env_vars"]["PYTHONPATH"] == "."  # jobs/runtime_env.yaml
    assert env["env_vars"][CONFIG_ENV] == "images: /x\n" and env["env_vars"][SUBMISSION_ENV] == "usam-ray-embed-1"
    assert {".git", ".venv", "runs"} <= set(env["excludes"])
    mine = tmp_path / "env.yaml"
    mine.write_text(yaml.safe_dump({"pip": ["usam-ray"], "env_vars": {"A": 1}, "excludes": ["data"]}))
    env = job_runtime_env("run", "x", ROOT, mine, "id")
    assert env["pip"] == ["usam-ray"] and env["env_vars"]["A"] == "1" and "PYTHONPATH" not in env["env_vars"]
    assert "data" in env["excludes"] and ".git" in env["excludes"]


def test_every_submittable_command_has_its_entrypoint():
    assert source_tree() == ROOT
    for command in COMMANDS:
        assert (ROOT / "jobs" / f"{command}_job.py").read_text().count(f'job_main("{command}")') == 1


@pytest.mark.parametrize("command, where, message", [
    ("embed", "no-jobs", "no jobs/embed_job.py"),
    ("train", "root", "cannot submit 'train'"),
])
def test_bad_submissions_are_refused(tmp_path, command, where, message):
    with pytest.raises(SubmissionError, match=message):
        job_runtime_env(command, "x", tmp_path if where == "no-jobs" else ROOT, None, "id")
    with pytest.raises(SubmissionError, match="no such file"):
        job_runtime_env("embed", "x", ROOT, tmp_path / "missing.yaml", "id")


def test_the_dashboard_address(monkeypatch):
    monkeypatch.delenv("USAM_RAY_JOBS_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address is not the job server
    assert dashboard_address() == DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert dashboard_address() == "http://head:8265"
    assert dashboard_address("head:9000") == "http://head:9000"


def test_outcomes_read_the_drivers_exit_code():
    assert [outcome("SUCCEEDED", 0), outcome("FAILED", 3), outcome("FAILED", 2), outcome("FAILED", 139),
            outcome("RUNNING", None), outcome("STOPPED", None)] == [
        "complete", "incomplete", "bad input", "failed (exit 139)", "running", "stopped"]


def test_submit_refuses_relative_paths_and_missing_settings_before_contacting_anyone(tmp_path):
    cfg = tmp_path / "embed.yaml"
    cfg.write_text("images: data/images\nout: /runs/x\n")
    done = subprocess.run([USAM_RAY, "submit", str(cfg), "--command", "embed", "--address", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "images = data/images is a relative path" in done.stderr
    cfg.write_text("out: /runs/x\n")
    done = subprocess.run([USAM_RAY, "submit", str(cfg), "--command", "embed"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "needs images" in done.stderr
    cfg.write_text("images: /data\nout: /runs/x\n")
    done = subprocess.run([USAM_RAY, "submit", str(cfg), "--command", "embed", "--address", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no Ray dashboard answers there" in done.stderr
