"""Cluster job submission for real: a two-node Ray cluster on this machine (two raylets started
with `ray start`, 1 CPU each, addresses on 127.0.0.1), jobs submitted and watched through
`usam-ray submit` / `usam-ray jobs` (Ray's JobSubmissionClient against the head's dashboard), and
a worker node killed mid-embed.

How we know work ran on both nodes: every shard's footer records the Ray node that wrote it
(``usam_ray.writer``), and `usam-ray status` counts them.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from usam_ray.data.shards import list_shards, read_shard_meta
from usam_ray.data.status import run_status
from usam_ray.data.toyscenes import CLASSES, write_scene_dataset

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
USAM_RAY = str(BIN / "usam-ray")
IMAGES = 36  # of the fault test: 6 shards of 6, the worker node killed once 2 are written


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _procs() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of every process."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(pid)] = (ppid, cmd)
    return out


def _kill_trees(match) -> list[str]:
    """SIGKILL every process whose command line ``match``es, and all their descendants; their
    program names (or process titles)."""
    procs = _procs()
    doomed = {p for p, (_, cmd) in procs.items() if match(cmd)}
    grew = True
    while grew:
        more = {p for p, (pp, _) in procs.items() if pp in doomed and p not in doomed}
        doomed |= more
        grew = bool(more)
    for p in doomed:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return [Path(procs[p][1].split(" ")[0]).name for p in sorted(doomed)]


class Cluster:
    """A head (1 CPU, dashboard on 127.0.0.1) and one worker node (1 CPU) started by `ray start`."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="urc", dir="/tmp")  # short: Ray's socket paths must fit
        self.gcs, self.dash, self.client, self.worker_port = (_free_port() for _ in range(4))
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
                    # the GCS declares a killed node dead after ~3 s, not Ray's default ~30 s (5 missed 3 s checks)
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3"}
        self.env.pop("RAY_ADDRESS", None)
        self.url = f"http://127.0.0.1:{self.dash}"

    def _ray(self, *args: str) -> None:
        # each node's agents on ports of their own: Ray's defaults (dashboard agent 52365, …) are taken by
        # any other Ray instance on this machine, such as the test session's, and the head then has no job agent
        agents = ["--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
                  "--metrics-export-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port())]
        done = subprocess.run([str(BIN / "ray"), "start", *args, *agents, "--disable-usage-stats"], env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def start_head(self) -> None:
        self._ray("--head", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs),
                  "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dash), "--include-dashboard", "true",
                  "--ray-client-server-port", str(self.client), "--temp-dir", self.temp)

    def start_worker(self) -> None:
        self._ray("--address", f"127.0.0.1:{self.gcs}", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                  "--node-manager-port", str(self.worker_port))
        time.sleep(2)  # registered with the GCS

    def kill_worker(self) -> list[str]:
        """SIGKILL the worker node: its raylet and everything it started (workers, agents)."""
        return _kill_trees(lambda cmd: cmd.split(" ")[0].endswith("raylet")
                           and f"--node_manager_port={self.worker_port}" in cmd)

    def stop(self) -> None:
        _kill_trees(lambda cmd: self.temp in cmd or f":{self.gcs} " in cmd)
        shutil.rmtree(self.temp, ignore_errors=True)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([USAM_RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start_head()
        c.start_worker()
        yield c
    finally:
        c.stop()


def _jobs(c: Cluster) -> dict[str, dict]:
    done = c.cli("jobs", "list", "--json", "--address", c.url)
    assert done.returncode == 0, done.stderr
    return {r["id"]: r for r in map(json.loads, done.stdout.splitlines())}


def _wait_status(c: Cluster, job: str, ends=("SUCCEEDED", "FAILED", "STOPPED"), timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = _jobs(c).get(job)
        if row and row["status"] in ends:
            return row
        time.sleep(1)
    raise AssertionError(f"job {job} not in {ends} after {timeout}s: {_jobs(c).get(job)}")


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _embed_config(tmp: Path, images: Path, out: Path, stall: int = 90) -> Path:
    # the stall guard ends a job whose node died; 45 s was too short for the actors' start-up on a loaded
    # 2-core machine (two raylets, a head, two SAM actors): jobs stalled before their first shard under load
    return _write_yaml(tmp / f"{out.name}.yaml", f"""images: {images}
out: {out}
sam: {{model: "sam:toy", points_per_side: 12}}
runtime: {{shard_size: 6, num_actors: 2, stall_timeout_s: {stall}}}
""")


def test_a_toy_run_submitted_to_two_nodes_completes_with_work_on_both(cluster, tmp_path):
    scenes = write_scene_dataset(tmp_path / "scenes", 12, seed=5)
    run = tmp_path / "run"
    config = _write_yaml(tmp_path / "run.yaml", f"""out: {run}
methods: [usam]
classes: {", ".join(CLASSES)}
images: {scenes / "images"}
gt: folder:{scenes}
synth: {{source: toy, per_class: 6, size: 128}}
sam: {{model: "sam:toy", points_per_side: 8}}
train: {{epochs: 3, batch_size: 8, hidden: 64}}
baselines: false
overlays: false
runtime: {{shard_size: 6, num_actors: 2, stall_timeout_s: 120}}
""")
    start = time.time()
    done = cluster.cli("submit", str(config), "--address", cluster.url, "--wait", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job = done.stdout.splitlines()[0].strip()
    seconds = time.time() - start
    # each stage's summary is in the job's logs; the job says complete
    logs = cluster.cli("jobs", "logs", job, "--address", cluster.url).stdout
    for line in ("embed: 30/30 images", "train: best student", "embed: 12/12 images", "label: 12/12 images", "mIoU"):
        assert line in logs, line
    row = _jobs(cluster)[job]
    assert (row["status"], row["outcome"], row["command"], row["out"]) == ("SUCCEEDED", "complete", "run", str(run))
    assert cluster.cli("jobs", "status", job, "--address", cluster.url).returncode == 0
    # the run directory is complete, and `status` (exit 0) agrees with what is on disk
    st = run_status(run)
    assert st.state == "complete", [(s.name, s.state, s.problems) for s in st.stages]
    assert {"embed", "label", "train/embed", "head", "eval"} <= {s.name for s in st.stages}
    assert cluster.cli("status", str(run)).returncode == 0
    assert len(list((run / "labels" / "semantic").glob("*.png"))) == 12
    # work on both nodes: the shards' footers name the Ray node that wrote each
    nodes = {read_shard_meta(p).writer.get("node") for d in (run / "embed", run / "train" / "embed",
                                                              run / "labels" / "images") for p in list_shards(d)}
    assert len(nodes) == 2 and None not in nodes, nodes
    assert all(s.by.get("job") == job for s in st.stages if s.by)
    print(f"two-node toy run: 30 + 12 images, 2 nodes, {seconds:.0f}s, shards by node {nodes}")


def test_a_worker_node_killed_mid_embed_then_resubmitted_does_every_image_exactly_once(cluster, tmp_path):
    images = write_scene_dataset(tmp_path / "scenes", IMAGES, seed=11) / "images"
    out = tmp_path / "embedrun"
    config = _embed_config(tmp_path, images, out)
    done = cluster.cli("submit", str(config), "--address", cluster.url)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip()
    deadline = time.time() + 240
    while len(list_shards(out / "embed")) < 2:  # mid-embed: some shards written, most images left
        assert time.time() < deadline, cluster.cli("jobs", "logs", job, "--address", cluster.url).stdout[-3000:]
        time.sleep(0.5)
    killed = cluster.kill_worker()
    at_kill = len(list_shards(out / "embed"))
    assert "raylet" in killed, killed
    row = _wait_status(cluster, job, timeout=300)
    # Ray's retries finish the job, or usam-ray ends it cleanly as incomplete (its stall guard): never a crash
    assert row["outcome"] in ("complete", "incomplete"), row
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in list_shards(out / "embed")}
    if row["outcome"] == "incomplete":
        assert run_status(out).state == "incomplete"
        assert cluster.cli("status", str(out)).returncode == 3
    cluster.start_worker()
    # nothing fails in the re-submission: its stall guard only needs to catch a real hang
    again = cluster.cli("submit", str(config), "--address", cluster.url, "--set", "runtime.stall_timeout_s=300",
                        "--wait", timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in list_shards(out / "embed")}
    assert {k: after[k] for k in before} == before  # nothing written before was rewritten
    ids = [i for p in list_shards(out / "embed") for i in pq.read_table(p, columns=["image_id"]).column(0).to_pylist()]
    assert len(ids) == len(set(ids)) == IMAGES  # every image exactly once
    assert run_status(out).state == "complete" and cluster.cli("status", str(out)).returncode == 0
    kept = sum(pq.read_metadata(out / "embed" / name).num_rows for name in before)
    print(f"fault: killed the worker node ({len(killed)} processes: {killed}) with {at_kill} of {len(after)} shards "
          f"written; the first job ended {row['outcome']} with {kept} images; the re-submission embedded "
          f"{IMAGES - kept} and rewrote none of the {len(before)} shards")


def test_a_stopped_job_reads_as_interrupted(cluster, tmp_path):
    images = write_scene_dataset(tmp_path / "scenes", 24, seed=12) / "images"
    out = tmp_path / "stopped"
    job = cluster.cli("submit", str(_embed_config(tmp_path, images, out)), "--address", cluster.url).stdout.strip()
    deadline = time.time() + 120
    while (out / "run.json").is_file() is False or "running" not in (out / "run.json").read_text():
        assert time.time() < deadline
        time.sleep(0.5)
    stop = cluster.cli("jobs", "stop", job, "--address", cluster.url)
    assert stop.returncode == 0 and "stop requested" in stop.stdout
    row = _wait_status(cluster, job, timeout=120)
    assert row["status"] == "STOPPED"
    assert cluster.cli("jobs", "status", job, "--address", cluster.url).returncode == 1
    st = run_status(out)
    assert st.state == "interrupted" and "re-run to continue" in st.stages[0].problems[0]
    assert cluster.cli("status", str(out)).returncode == 3
