"""What the Ray Train entry points share (U-SAM's heads, FMbSeg's alignment module): the
deterministic validation split, ordering rows by image id, equal step counts across DDP workers,
the per-epoch report with a head checkpoint from rank 0, and one ``TorchTrainer`` fit with live
progress in the driver.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def is_validation(image_id: str, fraction: float) -> bool:
    """Deterministic split: an image is in validation when its id hashes below ``fraction``."""
    h = int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


def collect_bags(batches) -> dict[str, np.ndarray]:
    """Concatenate numpy batches (each with an ``image_id`` column) and order the rows by image id,
    so that training sees the same data in the same order whatever order the shards were written
    or read in."""
    parts = list(batches)
    if not parts:
        return {"image_id": np.array([], object), "tokens": np.zeros((0, 0), np.float16),
                "labels": np.zeros((0, 0), np.float32), "val": np.zeros(0, bool)}
    bags = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    order = np.argsort(bags["image_id"].astype(str), kind="stable")
    return {k: v[order] for k, v in bags.items()}


def steps_everywhere(local: int) -> int:
    """The number of steps every worker takes: the smallest of the workers' counts (DDP needs the
    same number of steps on every worker)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    t = torch.tensor([local], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def report_epoch(model, metrics: dict, config: dict, rank0: bool) -> None:
    """Report an epoch to Ray Train, with a head checkpoint (``head.pt``) from rank 0 and its
    metrics on the driver's progress queue. The checkpoint carries ``config["classes"]``,
    ``config["phase"]``, ``config["embeddings"]`` and, when present, ``config["extra"]`` (more
    keys for the checkpoint dict)."""
    import ray.train

    from ..heads.checkpoint import save_head

    if not rank0:
        ray.train.report(metrics)
        return
    if config.get("progress") is not None:
        config["progress"].put(metrics)
    base = model.module if hasattr(model, "module") else model
    with tempfile.TemporaryDirectory() as d:
        save_head(Path(d) / "head.pt", base, config["classes"], config["phase"], metrics["epoch"], metrics,
                  config["embeddings"], config.get("extra"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def prepare_run(out: Path, runtime, workers, log: Callable[[str], None]) -> tuple[int, bool]:
    """Create the head directory ``out`` (a fresh run: Ray Train would resume a ``ray/`` folder it
    finds there, so that goes), start or join Ray, and decide the workers.

    Returns:
        (workers: ``workers`` or one per GPU, else 1; whether they use GPUs).
    """
    import shutil

    from ..runtime import init_ray

    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "ray", ignore_errors=True)
    resources = init_ray(runtime.address, log)
    use_gpu = resources.gpus >= 1 and runtime.device != "cpu"
    return workers or (max(1, int(resources.gpus)) if use_gpu else 1), use_gpu


def fit_phase(loop: Callable[[dict], None], phase: str, config: dict, datasets: dict, out: Path, workers: int,
              use_gpu: bool, log: Callable[[str], None], shown: Callable[[dict], dict]):
    """One ``TorchTrainer`` run of ``loop`` on ``datasets``; returns (result, every epoch's metrics in order).

    Ray Train keeps two checkpoints (in ``out/ray/<phase>``): the best by ``checkpoint_score`` and
    the last. Epoch metrics travel from rank 0 through a Ray queue to this process, which shows
    ``shown(metrics)`` on the progress line as they come.
    """
    import threading

    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    from ..progress import Progress

    queue = Queue()
    history: list[dict] = []
    progress = Progress(f"train {phase}", config["epochs"], "epochs", log)
    done = threading.Event()

    def drain(block: bool) -> None:
        while True:
            try:
                m = queue.get(block=block, timeout=0.5) if block else queue.get_nowait()
            except Empty:
                return
            history.append(m)
            progress.update(1, **shown(m))

    def watch() -> None:
        while not done.is_set():
            drain(True)

    watcher = threading.Thread(target=watch, name=f"train-{phase}-progress", daemon=True)
    watcher.start()
    try:
        trainer = TorchTrainer(
            loop, train_loop_config={**config, "phase": phase, "progress": queue},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker=None if use_gpu else {"CPU": 1}),
            datasets=datasets,
            run_config=RunConfig(storage_path=str((out / "ray").resolve()), name=phase,
                                 checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=
                                                                    "checkpoint_score", checkpoint_score_order="max")),
        )
        result = trainer.fit()
    finally:
        done.set()
        watcher.join(timeout=5)
        drain(False)
        progress.close()  # "train teacher: 25/25 epochs in 32s (…), loss …, val_mil …"
        queue.shutdown()
    history.sort(key=lambda m: m["epoch"])
    return result, history
