"""The one Ray entry point: start or join a cluster, and size model actor pools from what it has."""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from .config import RuntimeConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Resources:
    """What the cluster offers: ``cpus`` (float) and ``gpus`` (float), summed over nodes, and
    ``node_cpus``, each live node's CPUs (empty: not known, one node assumed)."""

    cpus: float
    gpus: float
    node_cpus: tuple[float, ...] = ()


class StageStalled(RuntimeError):
    """No result came out of a Ray Data stage for ``runtime.stall_timeout_s``."""


def stall_guard(rows: Iterable[T], timeout_s: float, stage: str) -> Iterator[T]:
    """``rows`` as they come, raising ``StageStalled`` when none came for ``timeout_s`` seconds (0:
    never). The iteration runs in a daemon thread, so a Ray Data pipeline that waits forever (its
    actors' node gone, resources it reserved no longer there) cannot hold the caller.

    Raises:
        StageStalled: names the stage, the wait and what Ray has now.
    """
    if not timeout_s:
        yield from rows
        return
    import queue

    box: "queue.Queue[tuple[str, Any]]" = queue.Queue(maxsize=2)

    def pump() -> None:
        try:
            for row in rows:
                box.put(("row", row))
            box.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box.put(("error", exc))

    pumping = threading.Thread(target=pump, name=f"usam-ray-{stage}-rows", daemon=True)
    pumping.start()
    while True:
        try:
            kind, value = box.get(timeout=timeout_s)
        except queue.Empty:
            abandon_thread(pumping)
            raise StageStalled(f"{stage}: no image finished in {timeout_s:g}s (runtime.stall_timeout_s) — a node may "
                               f"have been lost or the cluster is short of what the stage reserved ({_now_has()}); "
                               "the shards written are kept: re-run to continue") from None
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value


class _DropThread(logging.Filter):
    """Drops the log records of one thread (handlers run in the thread that logs; the thread object
    is compared, not its id, which a later thread may reuse)."""

    def __init__(self, thread: threading.Thread) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return threading.current_thread() is not self.thread


def abandon_thread(thread: threading.Thread) -> None:
    """Leave a stalled iteration thread behind quietly: what it logs is dropped from then on (once
    the command shuts Ray down under it, Ray Data's executor logs a traceback per metrics update),
    and Ray's auto-connect is turned off in this process, so that the thread cannot start a Ray
    instance of its own (or join the cluster again) after the stage ended as incomplete. Every
    usam-ray command starts or joins Ray explicitly (``init_ray``)."""
    drop = _DropThread(thread)
    for name in ("", "ray", "ray.data", "ray.train"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(drop)
    try:
        from ray._private import auto_init_hook

        auto_init_hook.enable_auto_connect = False  # what RAY_ENABLE_AUTO_CONNECT=0 sets at import
    except (ImportError, AttributeError):  # another Ray: the thread may log, nothing is lost
        pass


def rows_until_stalled(rows: Iterable[T], timeout_s: float, stage: str, log: Callable[[str], None]) -> Iterator[T]:
    """``stall_guard`` that ends the iteration instead of raising: the stall is logged and the
    caller's summary then finds the stage incomplete (its run.json says so; the CLI exits 3)."""
    try:
        yield from stall_guard(rows, timeout_s, stage)
    except StageStalled as exc:
        log(str(exc))


def _now_has() -> str:
    try:
        import ray

        res = ray.available_resources()
        return f"Ray has {len([n for n in ray.nodes() if n.get('Alive')])} live node(s), {res.get('CPU', 0):g} CPUs free"
    except Exception:  # noqa: BLE001 - only a hint
        return "Ray's state unknown"


@dataclass(frozen=True)
class PoolPlan:
    """How to run a model stage and the CPU tasks around it (readers before, writers after).

    Attributes:
        size (int): model actors in the pool.
        num_cpus (float): CPUs each model actor reserves (held for the actor's whole life).
        num_gpus (float): GPUs each model actor reserves (0 on CPU-only clusters; 1/k for k actors
            sharing a GPU).
        device (str): torch device inside the actors.
        torch_threads (int): intra-op threads per CPU actor (0: leave torch's default).
        read_tasks (int): decode/resize tasks in flight at once.
        read_cpus (float): CPUs each read task reserves.
        write_tasks (int): shard-writing tasks in flight at once.
        write_cpus (float): CPUs each write task reserves.
    """

    size: int
    num_cpus: float
    num_gpus: float
    device: str
    torch_threads: int
    read_tasks: int = 1
    read_cpus: float = 1.0
    write_tasks: int = 1
    write_cpus: float = 0.25

    def reserved_cpus(self) -> float:
        """CPUs reserved when the whole pool, every reader and every writer run at once."""
        return self.size * self.num_cpus + self.read_tasks * self.read_cpus + self.write_tasks * self.write_cpus


def verbose_logs() -> bool:
    """Whether Ray's own logs should reach the terminal (``usam-ray --verbose`` sets
    ``USAM_RAY_VERBOSE=1``)."""
    return os.environ.get("USAM_RAY_VERBOSE", "") not in ("", "0")


def quiet_ray_logs() -> None:
    """Keep Ray's INFO chatter (Ray Data's "execution finished", Ray Train's reports) out of the
    terminal: console handlers of Ray's loggers show warnings and errors only, file handlers (the
    session's ``ray-data.log`` …) keep everything; Ray's deprecation warnings are not shown."""
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
                handler.setLevel(max(handler.level, logging.WARNING))
                if not any(isinstance(f, _DropNotices) for f in handler.filters):
                    handler.addFilter(_DropNotices())


class _DropNotices(logging.Filter):
    """Drops Ray's warnings that only describe what usam-ray chose (its own progress display)."""

    NOTICES = ("Progress bars disabled",)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOTICES)


def init_ray(address: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> Resources:
    """Start or join Ray, once per process, and return the cluster's resources.

    A cluster is joined only when named: ``address`` (``--address`` / ``runtime.address``) or
    ``$RAY_ADDRESS`` (``auto`` joins the cluster ``ray start`` made on this machine). Otherwise
    every command starts a private local instance (``address="local"``), so two commands on one
    machine never attach to each other's instance and wait on each other. Token authentication is
    disabled and worker niceness set to 0 for private instances only (``RAY_AUTH_MODE``,
    ``RAY_worker_niceness``), unless already set.

    Unless ``verbose_logs()``, workers' output stays in the session's log files
    (``log_to_driver=False``) and Ray's Python loggers print only warnings here; ``log`` gets one
    line saying where the logs are.
    """
    import ray

    verbose = verbose_logs()
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        kwargs = {"logging_level": logging.INFO if verbose else logging.WARNING, "log_to_driver": verbose}
        if target:
            ray.init(address=target, **kwargs)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            # In a private instance the workers do all of the command's work: do not let Ray nice
            # them below its own processes (the default niceness cost ~5 % of embed throughput here).
            os.environ.setdefault("RAY_worker_niceness", "0")
            # Ray Train hands each report to its controller at this poll interval, and the worker
            # waits for it: at the default 2 s, the demo's 50 epoch reports cost 100 s.
            os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
            ray.init(address="local", include_dashboard=False, **kwargs)
        logs = _session_logs()
        if os.path.isdir(logs):  # where the CLI moves Ray's native error lines when it ends
            os.environ["USAM_RAY_SESSION_LOGS"] = logs
        if log is not None and not verbose:
            log(f"ray: {'joined ' + target if target else 'started a private instance'}; its logs are in "
                f"{logs} (--verbose shows them here)")
    if not verbose:
        quiet_ray_logs()
    res = ray.cluster_resources()
    nodes = tuple(float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive"))
    return Resources(float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0)), nodes)


def _session_logs() -> str:
    """The current Ray session's log folder (best effort)."""
    try:
        import ray

        return os.path.join(ray._private.worker.global_worker.node.get_session_dir_path(), "logs")
    except Exception:  # noqa: BLE001 - only a hint for the user
        return "/tmp/ray/session_latest/logs"


def plan_pools(cpus: float, gpus: float, device: str = "auto", num_actors: Optional[int] = None,
               actors_per_gpu: int = 1, cpus_per_actor: float = 0.5, node_cpus: tuple[float, ...] = ()) -> PoolPlan:
    """Size a model actor pool and the read/write tasks around it, for any node shape. Pure.

    Args:
        cpus (float), gpus (float): what the cluster offers.
        device (str): ``auto``, ``cpu`` or ``cuda`` (``cuda`` without GPUs is an error).
        num_actors (int | None): model actors wanted (default: ``actors_per_gpu`` per GPU, or on
            CPU-only clusters one per two spare CPUs).
        actors_per_gpu (int): actors sharing one GPU (each reserves 1/k of it): one actor's host
            work (RLE, Arrow) then overlaps another's GPU work.
        cpus_per_actor (float): CPUs a CPU-only model actor reserves at most.
        node_cpus (tuple[float, ...]): each node's CPUs (empty: one node).

    The plan always fits: the model actors together reserve at most half the CPUs, and the
    readers and writers share the rest, so ``reserved_cpus() <= cpus`` — no node shape leaves a
    read task waiting for a CPU that an idle actor holds (2 CPUs + 1 GPU deadlocked that way).
    On several nodes a task must also fit *on one node* beside the actors Ray spreads there: read
    and write tasks reserve at most what the smallest node keeps free with its share of actors
    (two 1-CPU nodes with an actor each left 0.5 CPU per node, and a 0.75-CPU read task never ran).

    Raises:
        RuntimeError: ``device`` is ``cuda`` but there is no GPU.
    """
    cpus = max(float(cpus), 0.0)
    if cpus <= 0:
        raise RuntimeError("the Ray cluster has no CPU: read and write tasks could never run")
    if gpus >= 1 and device != "cpu":
        per_gpu = max(1, actors_per_gpu)
        size = min(num_actors or int(gpus) * per_gpu, int(gpus) * per_gpu)
        num_gpus, dev, threads = 1.0 / per_gpu, "cuda", 0
        actor_cpus = min(1.0, cpus / (2 * size))
    else:
        if device == "cuda":
            raise RuntimeError("runtime.device is 'cuda' but the Ray cluster has no GPU")
        size = num_actors or max(1, int((cpus - 1.0) // 2))  # torch uses several threads per actor
        num_gpus, dev = 0.0, "cpu"
        threads = max(1, math.floor(cpus / size))
        actor_cpus = min(cpus_per_actor, cpus / (2 * size))
    rest = cpus - size * actor_cpus
    write_tasks = max(1, min(4, int(rest // 4)))
    write_cpus = min(1.0, rest / (4 * write_tasks)) if rest < 4 * write_tasks else 1.0
    read_budget = rest - write_tasks * write_cpus
    read_cpus = min(1.0, read_budget)
    if len(node_cpus) > 1:
        spare = min(node_cpus) - math.ceil(size / len(node_cpus)) * actor_cpus  # per node, actors spread evenly
        cap = max(0.05, spare / 2)  # one reader and one writer beside them
        read_cpus, write_cpus = min(read_cpus, cap), min(write_cpus, cap)
    read_tasks = max(1, int(read_budget / read_cpus + 1e-9))
    return PoolPlan(size=size, num_cpus=actor_cpus, num_gpus=num_gpus, device=dev, torch_threads=threads,
                    read_tasks=read_tasks, read_cpus=read_cpus, write_tasks=write_tasks, write_cpus=write_cpus)


def plan_cpu_pool(cpus: float, num_actors: Optional[int] = None) -> tuple[int, float]:
    """(actors, CPUs each) for a CPU-bound actor stage fed by a trivial source (labelling shards):
    one single-threaded actor per CPU but one, which stays free for the feeding tasks. Pure."""
    size = num_actors or max(1, int(cpus) - 1)
    return size, min(1.0, cpus / (size + 1))


def plan_model_pool(runtime: RuntimeConfig, resources: Resources) -> PoolPlan:
    """``plan_pools`` for the cluster's resources and the runtime settings."""
    return plan_pools(resources.cpus, resources.gpus, runtime.device, runtime.num_actors,
                      runtime.actors_per_gpu, runtime.cpus_per_actor, resources.node_cpus)


def quiet_ray_data() -> None:
    """Turn off Ray Data's own progress bars and start-up lines (usam-ray shows its own progress)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if not verbose_logs():
        quiet_ray_logs()
