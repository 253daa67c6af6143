"""Ray Train entry point for U-SAM's heads: MIL teacher, then uncertainty-distilled student.

``train_usam(cfg)`` reads the embedding shards of ``RUN/embed`` as a Ray Dataset (one row per
image: its P mask-token embeddings and its image-level labels), runs a ``TorchTrainer`` on any
number of workers (GPU when the cluster has them), and writes ``RUN/head/``:

- ``teacher.pt``, ``student.pt``: the last checkpoint of each phase; ``best.pt``: the student
  checkpoint with the lowest validation MIL loss (images whose id hashes into the validation
  split); each holds the head's arguments, state dict, class list, phase, epoch, metrics and the
  fingerprints of the embeddings it was trained on;
- ``head.json``: classes, fingerprints, settings and every epoch's metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..data.shards import list_shards, read_column
from ..data.schema import META_FINGERPRINT, META_MODELS


class TrainDataError(ValueError):
    """Embeddings that cannot train a head (no shards, no labels, labels outside the classes)."""


def is_validation(image_id: str, fraction: float) -> bool:
    """Deterministic split: an image is in validation when its id hashes below ``fraction``."""
    h = int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


def embeddings_info(embed_dir: Path) -> dict[str, Any]:
    """Fingerprint, models, token width and prompts per image of an embed stage (from its shards).

    Raises:
        TrainDataError: no shards, or shards with different fingerprints.
    """
    import pyarrow.parquet as pq

    shards = list_shards(embed_dir)
    if not shards:
        raise TrainDataError(f"no embedding shards in {embed_dir} (run `usam-ray embed` first)")
    fps = set()
    for s in shards:
        fps.add((pq.read_schema(s).metadata or {}).get(META_FINGERPRINT, b"").decode())
    if len(fps) != 1:
        raise TrainDataError(f"{embed_dir} mixes shards of several configurations: {sorted(fps)}")
    schema = pq.read_schema(shards[0])
    meta = schema.metadata or {}
    first = pq.read_table(shards[0], columns=["tokens"]).column("tokens")[0].as_py()
    return {"fingerprint": fps.pop(), "models": json.loads(meta.get(META_MODELS, b"{}")),
            "token_dim": schema.field("tokens").type.value_type.list_size, "prompts": len(first),
            "shards": [str(s) for s in shards]}


def class_list(embed_dir: Path, classes: Optional[list[str]]) -> list[str]:
    """The classes to learn: the given list (every image label must be in it), else the sorted
    set of image labels found in the shards.

    Raises:
        TrainDataError: no labels at all, or labels outside ``classes`` (named).
    """
    found = sorted({label for labels in read_column(embed_dir, "labels") for label in labels})
    if not found:
        raise TrainDataError(f"the images in {embed_dir} carry no labels: embed a labelled source "
                             "(classes:DIR, toy objects or synthetic images)")
    if classes is None:
        return found
    extra = [c for c in found if c not in classes]
    if extra:
        raise TrainDataError(f"labels {extra} in {embed_dir} are not among the classes {classes}")
    return list(classes)


def _read_bags(paths: dict, classes: list[str], prompts: int, token_dim: int, val_fraction: float):
    """Ray Data task: shard paths → bags. (Reads with pyarrow: ``ray.data.read_parquet`` fails to
    import with the fsspec release pip resolves here.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(str(p), columns=["image_id", "tokens", "labels"]) for p in paths["path"]]
    return _to_bags(pa.concat_tables(tables), classes, prompts, token_dim, val_fraction)


def _to_bags(batch, classes: list[str], prompts: int, token_dim: int, val_fraction: float):
    """pyarrow table → tokens (B, P·T) float32, multi-hot labels (B, C), validation flag (B,)."""
    from ..data.schema import embeddings_tokens

    index = {c: i for i, c in enumerate(classes)}
    flat = embeddings_tokens(batch).astype(np.float32)  # (B, P, T) through Arrow
    n = batch.num_rows
    labels = np.zeros((n, len(classes)), np.float32)
    for i, ls in enumerate(batch.column("labels").to_pylist()):
        for label in ls:
            labels[i, index[label]] = 1.0
    ids = batch.column("image_id").to_pylist()
    return {"tokens": flat.reshape(n, prompts * token_dim), "labels": labels,
            "val": np.array([is_validation(i, val_fraction) for i in ids])}


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: teacher (MIL) epochs, then student (MIL + uncertainty) epochs."""
    import ray.train
    import ray.train.torch
    import torch

    from ..heads.mil import MaskClassifier, bag_scores, mil_loss, student_loss

    torch.manual_seed(config["seed"])
    p, t, c = config["prompts"], config["token_dim"], len(config["classes"])
    shard = ray.train.get_dataset_shard("train")
    device = ray.train.torch.get_device()

    def batches():
        for b in shard.iter_torch_batches(batch_size=config["batch_size"], device=device, drop_last=False):
            yield b["tokens"].reshape(-1, p, t).float(), b["labels"], b["val"].bool()

    def epochs(model, phase: str, teacher=None):
        opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
        for epoch in range(config["epochs"]):
            model.train()
            sums = {"loss": 0.0, "mil": 0.0, "unc": 0.0, "bad_fraction": 0.0}
            n = 0
            val_loss, val_n, val_correct = 0.0, 0, 0
            for x, y, val in batches():
                valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                train = ~val
                if train.any():
                    logits = model(x[train])
                    if teacher is None:
                        loss = mil_loss(logits, valid[train], y[train], config["a"])
                        parts = {"mil": loss.item(), "unc": 0.0, "bad_fraction": 0.0}
                    else:
                        with torch.no_grad():
                            t_logits = teacher(x[train])
                        loss, parts = student_loss(logits, t_logits, valid[train], y[train], config["a"],
                                                   config["tau"], config["lambda_mil"], config["lambda_unc"])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sums["loss"] += loss.item()
                    for k in ("mil", "unc", "bad_fraction"):
                        sums[k] += parts[k]
                    n += 1
                if val.any():
                    model.eval()
                    with torch.no_grad():
                        vl = model(x[val])
                        val_loss += float(mil_loss(vl, valid[val], y[val], config["a"])) * int(val.sum())
                        pred = bag_scores(vl, valid[val], config["a"]).argmax(1)
                        val_correct += int(y[val].gather(1, pred[:, None]).squeeze(1).sum())
                        val_n += int(val.sum())
                    model.train()
            metrics = {"phase": phase, "epoch": epoch, **{k: v / max(n, 1) for k, v in sums.items()},
                       "val_mil": val_loss / val_n if val_n else float("nan"),
                       "val_bag_accuracy": val_correct / val_n if val_n else float("nan")}
            base = model.module if hasattr(model, "module") else model
            if ray.train.get_context().get_world_rank() != 0:
                ray.train.report(metrics)
                continue
            with tempfile.TemporaryDirectory() as d:
                torch.save({"args": base.args, "state_dict": base.state_dict(), "classes": config["classes"],
                            "phase": phase, "epoch": epoch, "metrics": metrics,
                            "embeddings": config["embeddings"]}, os.path.join(d, "head.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        return model

    args = {"in_dim": t, "num_classes": c, "hidden": config["hidden"], "dropout": config["dropout"]}
    teacher = epochs(ray.train.torch.prepare_model(MaskClassifier(**args)), "teacher")
    teacher.eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    epochs(ray.train.torch.prepare_model(MaskClassifier(**args)), "student", teacher)


def train_usam(cfg, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the teacher and the student head on ``cfg.embeddings`` and write ``cfg.out``.

    Returns:
        the ``head.json`` content.
    """
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ..pipelines.runtime import init_ray

    embed_dir = Path(cfg.embeddings)
    info = embeddings_info(embed_dir)
    classes = class_list(embed_dir, cfg.classes)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resources = init_ray(cfg.runtime.address)
    use_gpu = resources.gpus >= 1 and cfg.runtime.device != "cpu"
    workers = cfg.workers or (max(1, int(resources.gpus)) if use_gpu else 1)
    log(f"train: {len(classes)} classes {classes}; {info['prompts']} masks × {info['token_dim']} floats per image; "
        f"{workers} worker(s) on {'GPU' if use_gpu else 'CPU'}")
    ds = ray.data.from_items([{"path": p} for p in info["shards"]], override_num_blocks=len(info["shards"]))
    ds = ds.map_batches(_read_bags, batch_size=1,
                        fn_kwargs={"classes": classes, "prompts": info["prompts"], "token_dim": info["token_dim"],
                                   "val_fraction": cfg.val_fraction})
    config = {"classes": classes, "prompts": info["prompts"], "token_dim": info["token_dim"], "epochs": cfg.epochs,
              "batch_size": cfg.batch_size, "lr": cfg.lr, "a": cfg.a, "tau": cfg.tau_value(len(classes)),
              "lambda_mil": cfg.lambda_mil, "lambda_unc": cfg.lambda_unc, "hidden": cfg.hidden,
              "dropout": cfg.dropout, "seed": cfg.seed,
              "embeddings": {"fingerprint": info["fingerprint"], "models": info["models"]}}
    trainer = TorchTrainer(
        _train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        datasets={"train": ds},
        run_config=RunConfig(storage_path=str((out / "ray").resolve()), name="usam"),
    )
    result = trainer.fit()
    order = {"teacher": 0, "student": 1}
    checkpoints = sorted(result.best_checkpoints or [], key=lambda cm: (order[cm[1]["phase"]], cm[1]["epoch"]))
    history = [m for _c, m in checkpoints]
    for phase in ("teacher", "student"):
        phase_cps = [(c, m) for c, m in checkpoints if m["phase"] == phase]
        if not phase_cps:
            raise RuntimeError(f"training reported no {phase} checkpoint")
        shutil.copy(Path(phase_cps[-1][0].path) / "head.pt", out / f"{phase}.pt")
    students = [(c, m) for c, m in checkpoints if m["phase"] == "student"]
    best = min(students, key=lambda cm: (np.nan_to_num(cm[1]["val_mil"], nan=np.inf), -cm[1]["epoch"]))
    shutil.copy(Path(best[0].path) / "head.pt", out / "best.pt")
    summary = {"classes": classes, "embeddings": config["embeddings"], "settings": cfg.model_dump(mode="json"),
               "metrics": history, "best": {"epoch": best[1]["epoch"], "val_mil": best[1]["val_mil"]}}
    (out / "head.json").write_text(json.dumps(summary, indent=2, default=str))
    for m in history:
        log(f"train: {m['phase']:7s} epoch {m['epoch']}: loss {m['loss']:.4f} (mil {m['mil']:.4f}, unc {m['unc']:.4f}, "
            f"bad {m['bad_fraction']:.2f}); val mil {m['val_mil']:.4f}, val bag acc {m['val_bag_accuracy']:.3f}")
    return summary


def load_head(path: Path, device: str = "cpu"):
    """A head checkpoint (``teacher.pt``/``student.pt``/``best.pt``) → (MaskClassifier in eval mode, dict)."""
    import torch

    from ..heads.mil import MaskClassifier

    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = MaskClassifier(**ckpt["args"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
