"""`usam-ray status` on a complete, an interrupted and a conflicting run directory (built by hand
with the real shard writer and manifest), and the CLI's exit codes for them."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from usam_ray.data.schema import shard_metadata
from usam_ray.data.shards import MANIFEST, shard_name, update_manifest, write_shard
from usam_ray.data.status import run_status

USAM_RAY = str(Path(sys.executable).parent / "usam-ray")


def _shard(stage_dir: Path, ids: list[str], fingerprint: str) -> None:
    write_shard(pa.table({"image_id": ids}), stage_dir / shard_name(ids), shard_metadata("embeddings", fingerprint, {}))


def _run(tmp_path: Path, status: str, fps=("aaaa", "aaaa"), total: int = 4) -> Path:
    run = tmp_path / "run"
    update_manifest(run, "embed", status="running", fingerprint="aaaa", total_images=total, started="t0")
    _shard(run / "embed", ["a", "b"], fps[0])
    _shard(run / "embed", ["c", "d"], fps[1])
    if status != "running":
        update_manifest(run, "embed", status=status, finished="t1")
    return run


def _cli(run: Path) -> tuple[int, str]:
    done = subprocess.run([USAM_RAY, "status", str(run)], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout


def test_a_complete_run(tmp_path):
    run = _run(tmp_path, "complete")
    st = run_status(run)
    (s,) = st.stages
    assert (st.state, s.rows, s.expected, s.shards, s.fingerprints, s.problems) == ("complete", 4, 4, 2, ["aaaa"], [])
    assert s.writers and sum(s.writers.values()) == 2 and s.by["pid"]
    code, out = _cli(run)
    assert code == 0 and "embed  complete     4 done, 0 errors of 4, 2 shards" in out


def test_a_stage_that_says_complete_but_lacks_images_is_incomplete(tmp_path):
    st = run_status(_run(tmp_path, "complete", total=6))
    assert st.state == "incomplete" and st.stages[0].problems == ["4 done + 0 errors of 6 images"]


def test_an_interrupted_run(tmp_path):
    run = _run(tmp_path, "running")
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["stages"]["embed"]["by"]["pid"] = "999999999"  # the process that said "running" is gone
    (run / MANIFEST).write_text(json.dumps(manifest))
    st = run_status(run)
    assert st.state == "interrupted" and "re-run to continue" in st.stages[0].problems[0]
    code, out = _cli(run)
    assert code == 3 and "interrupted" in out
    # while its process lives (this one), it is running
    manifest["stages"]["embed"]["by"]["pid"] = str(__import__("os").getpid())
    (run / MANIFEST).write_text(json.dumps(manifest))
    assert run_status(run).state == "running"


def test_a_conflicting_run(tmp_path):
    run = _run(tmp_path, "complete", fps=("aaaa", "bbbb"))
    st = run_status(run)
    assert st.state == "conflict" and st.stages[0].problems == ["shards of 2 configurations: aaaa, bbbb"]
    assert _cli(run)[0] == 3
    other = _run(tmp_path / "x", "complete", fps=("bbbb", "bbbb"))
    assert run_status(other).stages[0].problems == ["shards have fingerprint bbbb but run.json says aaaa"]


def test_not_a_run_directory(tmp_path):
    done = subprocess.run([USAM_RAY, "status", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {tmp_path / 'nope'}: no such run directory"
