"""Pool planning (pure) over node shapes, and one private Ray instance per command."""

import itertools
import logging
import os
import subprocess
import sys
import threading
from collections import Counter

import pytest

from conftest import write_images
from usam_ray.data.shards import read_column
from usam_ray.runtime import StageStalled, plan_cpu_pool, plan_pools, rows_until_stalled, stall_guard

SHAPES = list(itertools.product([1, 2, 4, 16, 64], [0, 1, 2, 8]))


@pytest.mark.parametrize("cpus, gpus", SHAPES)
@pytest.mark.parametrize("actors_per_gpu", [1, 2])
def test_every_node_shape_fits(cpus, gpus, actors_per_gpu):
    """What the model pool, the readers and the writers reserve fits the node, with at least one
    of each, so no shape deadlocks (an idle actor never holds the CPU a read task waits for)."""
    plan = plan_pools(cpus, gpus, actors_per_gpu=actors_per_gpu)
    assert plan.size >= 1 and plan.read_tasks >= 1 and plan.write_tasks >= 1
    assert plan.reserved_cpus() <= cpus + 1e-9, plan
    assert plan.size * plan.num_cpus <= cpus / 2 + 1e-9  # actors hold at most half the CPUs
    assert 0 < plan.read_cpus <= 1 and 0 < plan.write_cpus <= 1 and plan.num_cpus > 0
    if gpus:
        assert plan.device == "cuda" and plan.size == gpus * actors_per_gpu
        assert plan.size * plan.num_gpus <= gpus + 1e-9
    else:
        assert plan.device == "cpu" and plan.num_gpus == 0 and plan.torch_threads >= 1


@pytest.mark.parametrize("cpus, gpus, expected", [
    # (model actors, CPUs each, read tasks, write tasks)
    (2, 1, (1, 1.0, 1, 1)),     # notebook GPU: this shape deadlocked with actor 1 CPU + read 1 CPU + writer
    (16, 1, (1, 1.0, 12, 3)),   # the H100 machine
    (2, 0, (1, 0.5, 1, 1)),     # this build machine
    (64, 8, (8, 1.0, 52, 4)),
])
def test_plans_for_common_shapes(cpus, gpus, expected):
    plan = plan_pools(cpus, gpus, actors_per_gpu=1)
    assert (plan.size, plan.num_cpus, plan.read_tasks, plan.write_tasks) == expected


def test_cuda_without_gpu_is_refused():
    with pytest.raises(RuntimeError, match="no GPU"):
        plan_pools(4, 0, device="cuda")


def test_num_actors_is_capped_by_gpus():
    assert plan_pools(16, 2, num_actors=5, actors_per_gpu=1).size == 2
    assert plan_pools(16, 0, num_actors=3).size == 3


@pytest.mark.slow
def test_two_commands_at_once_each_get_their_own_ray(tmp_path, zoo):
    """Two `usam-ray embed` commands started together on this machine both finish, every image
    exactly once (with address="auto" the second attached to the first's instance and both stalled)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    procs, folders = [], {}
    for name in ("a", "b"):
        folders[name] = write_images(tmp_path / name, 6, seed=ord(name), bad=False)["ok"]
        cmd = [sys.executable, "-m", "usam_ray.cli", "embed", "--images", str(tmp_path / name),
               "--out", str(tmp_path / f"run-{name}"), "--models", str(zoo), "--set", "sam.points_per_side=2",
               "--set", "runtime.shard_size=2"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    for name, ok in folders.items():
        ids = Counter(read_column(tmp_path / f"run-{name}" / "embed", "image_id"))
        assert sorted(ids) == sorted(ok) and set(ids.values()) == {1}


@pytest.mark.parametrize("cpus", [1, 2, 4, 16, 64])
def test_cpu_pool_leaves_room_for_its_feeders(cpus):
    size, each = plan_cpu_pool(cpus)
    assert size >= 1 and 0 < each <= 1
    assert size * each <= cpus - min(1.0, cpus / (size + 1)) + 1e-9  # one feeding task always fits


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _stalling(rows: list, release: threading.Event, logged: threading.Event):
    """Yields ``rows``, then waits (a stalled pipeline); once released, logs as Ray Data's executor
    does when Ray is shut down under it, and would go on."""
    yield from rows
    release.wait(30)
    logging.getLogger("ray.data._internal.stats").warning("Ray is not initialized (from the stalled thread)")
    logged.set()
    yield "late"


def test_a_stalled_stage_ends_with_the_rows_that_came_and_its_thread_is_left_quiet(monkeypatch):
    from ray._private import auto_init_hook

    monkeypatch.setattr(auto_init_hook, "enable_auto_connect", True)  # restored afterwards
    records = _Records()
    logger = logging.getLogger("ray.data")
    logger.addHandler(records)
    try:
        release, logged = threading.Event(), threading.Event()
        got = []
        with pytest.raises(StageStalled, match=r"^embed: no image finished in 0.3s \(runtime.stall_timeout_s\)"):
            for row in stall_guard(_stalling([1, 2], release, logged), 0.3, "embed"):
                got.append(row)
        assert got == [1, 2]
        assert auto_init_hook.enable_auto_connect is False  # the thread cannot start or join a Ray of its own
        release.set()
        assert logged.wait(10)
        logging.getLogger("ray.data._internal.stats").warning("from the main thread")
        assert records.messages == ["from the main thread"]  # the stalled thread's warning dropped, ours kept
    finally:
        logger.removeHandler(records)


def test_rows_until_stalled_logs_the_stall_and_ends_and_a_zero_timeout_never_stalls():
    release, logged = threading.Event(), threading.Event()
    lines: list[str] = []
    assert list(rows_until_stalled(_stalling(["a"], release, logged), 0.2, "label", lines.append)) == ["a"]
    assert len(lines) == 1 and lines[0].startswith("label: no image finished in 0.2s") and "re-run to continue" in lines[0]
    release.set()
    assert list(stall_guard(iter([1, 2, 3]), 0, "embed")) == [1, 2, 3]
    assert list(stall_guard(iter([1, 2, 3]), 5, "embed")) == [1, 2, 3]
