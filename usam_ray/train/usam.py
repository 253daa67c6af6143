"""Ray Train entry point for U-SAM's heads: MIL teacher, then uncertainty-distilled student.

``train_usam(cfg)`` reads the embedding shards of ``RUN/embed`` as a Ray Dataset (one row per
image: its P mask-token embeddings and its image-level labels), runs a ``TorchTrainer`` on any
number of workers (GPU when the cluster has them), and writes ``RUN/head/``:

- ``teacher.pt``, ``student.pt``: the last checkpoint of each phase; ``best.pt``: the student
  checkpoint with the lowest validation MIL loss (images whose id hashes into the validation
  split); each holds the head's arguments, state dict, class list, phase, epoch, metrics and the
  fingerprints of the embeddings it was trained on;
- ``head.json``: classes, fingerprints, settings and every epoch's metrics;
- ``ray/{teacher,student}/``: Ray Train's run folders, each keeping two checkpoints (the best by
  validation loss and the last).

Each phase is one ``TorchTrainer`` run of ``train_step`` / ``eval_step`` epochs. Training is
reproducible: every worker orders its bags by image id and draws each epoch's order from the seed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..data.shards import list_shards, read_column, read_shard_meta
from .loop import collect_bags, fit_phase, is_validation, prepare_run, report_epoch, steps_everywhere


class TrainDataError(ValueError):
    """Embeddings that cannot train a head (no shards, no labels, labels outside the classes)."""


def embeddings_info(embed_dir: Path) -> dict[str, Any]:
    """Fingerprint, models, token width and prompts per image of an embed stage (from its shards).

    Raises:
        TrainDataError: no shards, or shards with different fingerprints.
    """
    import pyarrow.parquet as pq

    shards = list_shards(embed_dir)
    if not shards:
        raise TrainDataError(f"no embedding shards in {embed_dir} (run `usam-ray embed` first)")
    metas = [read_shard_meta(s) for s in shards]
    fps = {m.fingerprint or "" for m in metas}
    if len(fps) != 1:
        raise TrainDataError(f"{embed_dir} mixes shards of several configurations: {sorted(fps)}")
    tokens = metas[0].schema.field("tokens").type  # list<fixed_size_list<float16, T>>, one item per prompt
    prompts = 0
    for shard in shards:  # prompts per image: the first row's token count (one row read, not a column)
        pf = pq.ParquetFile(shard)
        if pf.metadata.num_rows:
            prompts = len(pf.read_row_group(0, columns=["tokens"]).column("tokens")[0])
            break
    return {"fingerprint": fps.pop(), "models": metas[0].models, "token_dim": tokens.value_type.list_size,
            "prompts": prompts, "shards": [str(s) for s in shards]}


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
    """pyarrow table → ``image_id`` (B,) str, ``tokens`` (B, P·T) float16, multi-hot ``labels``
    (B, C) float32, validation flag ``val`` (B,) bool."""
    from ..data.schema import embeddings_tokens

    index = {c: i for i, c in enumerate(classes)}
    flat = embeddings_tokens(batch).astype(np.float16)  # (B, P, T) through Arrow
    n = batch.num_rows
    labels = np.zeros((n, len(classes)), np.float32)
    for i, ls in enumerate(batch.column("labels").to_pylist()):
        for label in ls:
            labels[i, index[label]] = 1.0
    ids = batch.column("image_id").to_pylist()
    return {"image_id": np.array(ids, dtype=object), "tokens": flat.reshape(n, prompts * token_dim),
            "labels": labels, "val": np.array([is_validation(i, val_fraction) for i in ids])}


def train_step(model, optimizer, x, y, config: dict, teacher=None) -> dict[str, float]:
    """One optimisation step on bags ``x`` (B, P, T) float32 with labels ``y`` (B, C): the MIL loss
    (teacher phase) or MIL + uncertainty distillation from ``teacher`` (student phase)."""
    import torch

    from ..heads.mil import mil_loss, student_loss

    model.train()
    valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    logits = model(x)
    if teacher is None:
        loss = mil_loss(logits, valid, y, config["a"])
        parts = {"mil": loss.item(), "unc": 0.0, "bad_fraction": 0.0}
    else:
        with torch.no_grad():
            t_logits = teacher(x)
        loss, parts = student_loss(logits, t_logits, valid, y, config["a"], config["tau"], config["lambda_mil"],
                                   config["lambda_unc"])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), **{k: float(parts[k]) for k in ("mil", "unc", "bad_fraction")}}


def eval_step(model, x, y, config: dict) -> tuple[float, int, int]:
    """Validation on bags ``x`` (B, P, T): (summed MIL loss, bags whose top class is a true label, B)."""
    import torch

    from ..heads.mil import bag_scores, mil_loss

    model.eval()
    valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    with torch.no_grad():
        logits = model(x)
        loss = float(mil_loss(logits, valid, y, config["a"])) * len(x)
        pred = bag_scores(logits, valid, config["a"]).argmax(1)
        correct = int(y.gather(1, pred[:, None]).squeeze(1).sum())
    return loss, correct, len(x)


def run_epoch(model, opt, batches, config: dict, teacher=None, sched=None) -> dict[str, float]:
    """One pass of ``train_step`` over ``batches`` ((x, y) pairs), stepping ``sched`` (if any)
    after each; the mean of each loss term."""
    sums = {"loss": 0.0, "mil": 0.0, "unc": 0.0, "bad_fraction": 0.0}
    steps = 0
    for x, y in batches:
        for k, v in train_step(model, opt, x, y, config, teacher).items():
            sums[k] += v
        if sched is not None:
            sched.step()
        steps += 1
    return {k: v / max(steps, 1) for k, v in sums.items()}


def validate(model, batches, config: dict, epoch: int) -> dict[str, float]:
    """``eval_step`` over the validation ``batches``: ``val_mil`` (mean bag loss),
    ``val_bag_accuracy`` and ``checkpoint_score`` (−val_mil; the epoch when there is no
    validation data, so that the last checkpoint wins)."""
    val_loss, val_correct, val_n = 0.0, 0, 0
    for x, y in batches:
        loss, correct, n = eval_step(model, x, y, config)
        val_loss, val_correct, val_n = val_loss + loss, val_correct + correct, val_n + n
    return {"val_mil": val_loss / val_n if val_n else float("nan"),
            "val_bag_accuracy": val_correct / val_n if val_n else float("nan"),
            # Ray Train keeps the best checkpoint by this (and always the last one)
            "checkpoint_score": -val_loss / val_n if val_n else float(epoch)}


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: one phase (teacher: MIL; student: MIL + uncertainty from the
    teacher in ``config["teacher_state"]``), one report per epoch with a checkpoint from rank 0.

    The worker's bags are read once and ordered by image id; each epoch visits the training bags
    in a permutation drawn from ``config["seed"]`` (so a seeded run repeats exactly).
    """
    import ray.train
    import ray.train.torch
    import torch

    from ..heads.mil import MaskClassifier

    torch.manual_seed(config["seed"])
    p, t = config["prompts"], config["token_dim"]
    device = ray.train.torch.get_device()
    bags = collect_bags(ray.train.get_dataset_shard("train").iter_batches(batch_size=None, batch_format="numpy"))
    train_idx, val_idx = np.flatnonzero(~bags["val"]), np.flatnonzero(bags["val"])
    bs = config["batch_size"]

    def batches(idx: np.ndarray, count: int):
        for step in range(count):
            part = idx[step * bs:(step + 1) * bs]
            x = torch.as_tensor(bags["tokens"][part].astype(np.float32)).reshape(-1, p, t).to(device)
            yield x, torch.as_tensor(bags["labels"][part]).to(device)

    args = config["head_args"]
    model = ray.train.torch.prepare_model(MaskClassifier(**args))
    teacher = None
    if config["phase"] == "student":
        teacher = MaskClassifier(**args)
        teacher.load_state_dict(config["teacher_state"])
        teacher = teacher.to(device).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    steps = steps_everywhere(-(-len(train_idx) // bs))  # every rank steps as often (DDP)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps * config["epochs"]))
             if config.get("lr_schedule") == "cosine" else None)
    gen = torch.Generator().manual_seed(config["seed"])
    rank0 = ray.train.get_context().get_world_rank() == 0
    for epoch in range(config["epochs"]):
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        lr = opt.param_groups[0]["lr"]  # this epoch's first step's
        metrics = {"phase": config["phase"], "epoch": epoch, "lr": lr,
                   **run_epoch(model, opt, batches(order, steps), config, teacher, sched)}
        metrics.update(validate(model, batches(val_idx, -(-len(val_idx) // bs)), config, epoch))
        report_epoch(model, metrics, config, rank0)


def _shown(metrics: dict) -> dict:
    """What the progress line shows of an epoch."""
    return {"loss": round(metrics["loss"], 4), "val_mil": round(metrics["val_mil"], 4)}


def train_usam(cfg, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the teacher and the student head on ``cfg.embeddings`` and write ``cfg.out``.

    Returns:
        the ``head.json`` content.
    """
    import ray.data
    import torch

    from ..heads.checkpoint import write_head_json

    embed_dir = Path(cfg.embeddings)
    info = embeddings_info(embed_dir)
    classes = class_list(embed_dir, cfg.classes)
    out = Path(cfg.out)
    workers, use_gpu = prepare_run(out, cfg.runtime, cfg.workers, log)
    log(f"train: {len(classes)} classes {classes}; {info['prompts']} masks × {info['token_dim']} floats per image; "
        f"{workers} worker(s) on {'GPU' if use_gpu else 'CPU'}")
    ds = ray.data.from_items([{"path": p} for p in info["shards"]], override_num_blocks=len(info["shards"]))
    ds = ds.map_batches(_read_bags, batch_size=1,
                        fn_kwargs={"classes": classes, "prompts": info["prompts"], "token_dim": info["token_dim"],
                                   "val_fraction": cfg.val_fraction})
    config = {"classes": classes, "prompts": info["prompts"], "token_dim": info["token_dim"], "epochs": cfg.epochs,
              "batch_size": cfg.batch_size, "lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "a": cfg.a,
              "tau": cfg.tau_value(len(classes)), "lambda_mil": cfg.lambda_mil, "lambda_unc": cfg.lambda_unc,
              "seed": cfg.seed,
              "head_args": {"in_dim": info["token_dim"], "num_classes": len(classes), "hidden": cfg.hidden,
                            "dropout": cfg.dropout},
              "embeddings": {"fingerprint": info["fingerprint"], "models": info["models"]}}
    teacher_result, teacher_history = fit_phase(_train_loop, "teacher", config, {"train": ds}, out, workers, use_gpu, log, _shown)
    shutil.copy(Path(teacher_result.checkpoint.path) / "head.pt", out / "teacher.pt")
    teacher_state = torch.load(out / "teacher.pt", map_location="cpu", weights_only=True)["state_dict"]
    student_result, student_history = fit_phase(_train_loop, "student", {**config, "teacher_state": teacher_state},
                                                {"train": ds}, out, workers, use_gpu, log, _shown)
    shutil.copy(Path(student_result.checkpoint.path) / "head.pt", out / "student.pt")
    kept = student_result.best_checkpoints or [(student_result.checkpoint, student_result.metrics)]
    best_ckpt, best = max(kept, key=lambda cm: (cm[1]["checkpoint_score"], cm[1]["epoch"]))
    shutil.copy(Path(best_ckpt.path) / "head.pt", out / "best.pt")
    history = teacher_history + student_history
    summary = {"classes": classes, "embeddings": config["embeddings"], "settings": cfg.model_dump(mode="json"),
               "metrics": history, "best": {"epoch": best["epoch"], "val_mil": best["val_mil"]}}
    write_head_json(out, summary)
    log(f"train: best student epoch {best['epoch'] + 1}/{cfg.epochs} (val mil {best['val_mil']:.4f}); "
        f"every epoch's metrics in {out / 'head.json'}")
    return summary
