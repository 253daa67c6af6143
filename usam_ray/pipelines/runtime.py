"""The one Ray entry point: start or join a cluster, and size model actor pools from what it has."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

from ..config import RuntimeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """What the cluster offers: ``cpus`` (float) and ``gpus`` (float), summed over nodes."""

    cpus: float
    gpus: float


@dataclass(frozen=True)
class PoolPlan:
    """How to run a model stage.

    Attributes:
        size (int): actors in the pool.
        num_cpus (float): CPUs each actor reserves.
        num_gpus (float): GPUs each actor reserves (0 on CPU-only clusters).
        device (str): torch device inside the actor.
        torch_threads (int): intra-op threads per CPU actor (0: leave torch's default).
    """

    size: int
    num_cpus: float
    num_gpus: float
    device: str
    torch_threads: int


def init_ray(address: Optional[str] = None) -> Resources:
    """Start or join Ray, once per process, and return the cluster's resources.

    ``address`` (or ``$RAY_ADDRESS``) joins that cluster; otherwise a running local cluster is
    joined (``address="auto"``) and, when there is none, a local instance is started. Token
    authentication is disabled for local instances only (``RAY_AUTH_MODE``), unless already set.
    """
    import ray

    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        if target:
            ray.init(address=target, logging_level=logging.WARNING)
        else:
            try:
                ray.init(address="auto", logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError):
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                ray.init(include_dashboard=False, logging_level=logging.WARNING)
    res = ray.cluster_resources()
    return Resources(float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0)))


def plan_model_pool(runtime: RuntimeConfig, resources: Resources) -> PoolPlan:
    """Size a model actor pool.

    With GPUs (and device not forced to cpu): one actor per GPU (or ``runtime.num_actors``), each
    ``num_gpus=1``. On CPU-only clusters: actors reserve ``runtime.cpus_per_actor`` (fractional),
    and the pool leaves at least one whole CPU free for read and write tasks — a pool that takes
    every CPU starves the reads and the dataset never finishes.
    """
    if resources.gpus >= 1 and runtime.device != "cpu":
        size = runtime.num_actors or max(1, int(resources.gpus))
        return PoolPlan(size=size, num_cpus=1.0 if resources.cpus >= 2 * size else 0.5, num_gpus=1.0,
                        device="cuda", torch_threads=0)
    if runtime.device == "cuda":
        raise RuntimeError("runtime.device is 'cuda' but the Ray cluster has no GPU")
    # One actor per two spare CPUs (torch uses several threads per actor); at least one actor.
    size = runtime.num_actors or max(1, int((resources.cpus - 1.0) // 2))
    threads = max(1, math.floor(max(resources.cpus, 1.0) / size))
    return PoolPlan(size=size, num_cpus=runtime.cpus_per_actor, num_gpus=0.0, device="cpu", torch_threads=threads)


def quiet_ray_data() -> None:
    """Turn off Ray Data's own progress bars (usam-ray prints its own progress lines)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
