"""Ray Train entry point for FMbSeg's Stage 2: the alignment module.

``train_align(cfg)`` pairs each pseudo shard (``RUN/pseudo``) with the features shard of the same
name (``RUN/features``: DINOv2 patch tokens, cached once by ``usam-ray pseudo``, so epochs never
run DINOv2), turns each image's Stage 1 masks into per-patch targets (every 1.1 mask + a seeded
share of 1.2, ``methods.fmbseg.pseudo_label_map`` → ``patch_targets``), and fits the alignment
module with TSupCon on a ``TorchTrainer`` (any number of workers, GPU when the cluster has them):
SGD + cosine annealing, ``batch_size`` images per step, all their patches contrasted together.

Writes ``RUN/align/``: ``align.pt`` (the last epoch), ``best.pt`` (the epoch with the best
validation patch accuracy against the pseudo labels of held-out images; the last when there are
none) — each holding the module's arguments, its state dict, the classes, the text prototypes
(background first) and their prompts, and the pseudo stage's fingerprint and models (SAM, CLIP,
DINOv2) — and ``head.json`` (classes, prompts, fingerprints, settings, every epoch's metrics).

Reproducible on one worker: the rows are ordered by image id and each epoch's order is drawn
from the seed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.shards import MANIFEST, list_shards, read_manifest, read_shard_meta
from .loop import collect_bags, fit_phase, is_validation, prepare_run, report_epoch, steps_everywhere
from .usam import TrainDataError


def pseudo_info(pseudo_dir: Path, features_dir: Path) -> dict[str, Any]:
    """The pairs of shards to train on and what they were made with.

    Returns:
        ``names`` (shard names present in both folders), ``fingerprint`` and ``models`` of the
        pseudo stage, ``classes`` (the pseudo run's vocabulary, from RUN/run.json), ``dim``
        (DINOv2's width) and ``images``.

    Raises:
        TrainDataError: no pseudo or features shards, mixed fingerprints, or no class list.
    """
    import pyarrow.parquet as pq

    pseudo = {p.name: p for p in list_shards(pseudo_dir)}
    feats = {p.name: p for p in list_shards(features_dir)}
    names = sorted(set(pseudo) & set(feats))
    if not names:
        raise TrainDataError(f"no pseudo-label shards with features in {pseudo_dir} and {features_dir} "
                             "(run `usam-ray pseudo` first)")
    metas = [read_shard_meta(feats[n]) for n in names]
    fps = {m.fingerprint or "" for m in metas}
    if len(fps) != 1:
        raise TrainDataError(f"{features_dir} mixes shards of several pseudo runs: {sorted(fps)}")
    classes = read_manifest(Path(pseudo_dir).parent).get("stages", {}).get("pseudo", {}).get("classes")
    if not classes:
        raise TrainDataError(f"{Path(pseudo_dir).parent / MANIFEST} does not say which classes {pseudo_dir} was "
                             "labelled with")
    dim = metas[0].schema.field("features").type.value_type.list_size
    images = sum(pq.read_metadata(feats[n]).num_rows for n in names)
    return {"names": names, "fingerprint": fps.pop(), "models": metas[0].models, "classes": list(classes),
            "dim": dim, "images": images}


def patch_rows(pseudo_table, features_table, classes: int, fraction: float, seed: int, val_fraction: float):
    """One pseudo shard and its features shard → training rows, in the features shard's order.

    Returns:
        dict of ``image_id`` (B,) object, ``features`` (B, N·D) float16, ``targets`` (B, N) int64
        (0 = background, c + 1 = class c), ``val`` (B,) bool.
    """
    from ..data.schema import features_arrays, pseudo_masksets
    from ..methods.fmbseg import patch_targets, pseudo_label_map, training_masks

    sets = dict(zip(pseudo_table.column("image_id").to_pylist(), pseudo_masksets(pseudo_table)))
    ids = features_table.column("image_id").to_pylist()
    feats = features_arrays(features_table)
    sizes = dict(zip(pseudo_table.column("image_id").to_pylist(),
                     zip(pseudo_table.column("height").to_pylist(), pseudo_table.column("width").to_pylist())))
    targets = []
    for image_id, f in zip(ids, feats):
        ms = sets[image_id]
        keep = training_masks(image_id, ms.data["stage"], fraction, seed)
        grid = int(round(len(f) ** 0.5))
        targets.append(patch_targets(pseudo_label_map(ms, keep, *sizes[image_id]), grid, classes))
    n = len(ids)
    return {"image_id": np.array(ids, dtype=object),
            "features": np.stack([f.astype(np.float16).reshape(-1) for f in feats]) if n else np.zeros((0, 0), np.float16),
            "targets": np.stack(targets) if n else np.zeros((0, 0), np.int64),
            "val": np.array([is_validation(i, val_fraction) for i in ids], bool)}


def _read_pairs(batch: dict, pseudo_dir: str, features_dir: str, classes: int, fraction: float, seed: int,
                val_fraction: float):
    """Ray Data task: shard names → training rows (``patch_rows``) of those shard pairs."""
    import pyarrow.parquet as pq

    parts = [patch_rows(pq.read_table(str(Path(pseudo_dir) / name)), pq.read_table(str(Path(features_dir) / name)),
                        classes, fraction, seed, val_fraction) for name in batch["name"]]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _align_loop(config: dict) -> None:
    """Runs on every Ray Train worker: ``epochs`` of TSupCon steps over ``batch_size``-image
    batches (SGD, cosine-annealed per step), validation patch accuracy and loss, one report per
    epoch with a checkpoint from rank 0."""
    import ray.train
    import ray.train.torch
    import torch

    from ..heads.align import AlignmentHead, label_patches, tsupcon

    torch.manual_seed(config["seed"])
    device = ray.train.torch.get_device()
    rows = collect_bags(ray.train.get_dataset_shard("train").iter_batches(batch_size=None, batch_format="numpy"))
    d = config["head_args"]["in_dim"]
    prototypes = torch.as_tensor(np.asarray(config["extra"]["prototypes"], np.float32)).to(device)
    train_idx, val_idx = np.flatnonzero(~rows["val"]), np.flatnonzero(rows["val"])
    val_counts = np.bincount(rows["targets"][val_idx].reshape(-1), minlength=prototypes.shape[0])
    majority = float(val_counts.max() / val_counts.sum()) if len(val_idx) else float("nan")
    bs = config["batch_size"]
    balanced = config.get("loss") == "tsupcon_balanced"

    def batches(idx: np.ndarray, count: int):
        for step in range(count):
            part = idx[step * bs:(step + 1) * bs]
            x = torch.as_tensor(rows["features"][part].astype(np.float32)).reshape(len(part), -1, d).to(device)
            yield x, torch.as_tensor(rows["targets"][part]).to(device)

    model = ray.train.torch.prepare_model(AlignmentHead(**config["head_args"]))
    steps = steps_everywhere(-(-len(train_idx) // bs))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                          weight_decay=config["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps * config["epochs"]))
    gen = torch.Generator().manual_seed(config["seed"])
    rank0 = ray.train.get_context().get_world_rank() == 0
    for epoch in range(config["epochs"]):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        total, correct, seen = 0.0, 0, 0
        for x, y in batches(order, steps):
            loss = tsupcon(model(x).reshape(-1, prototypes.shape[1]), y.reshape(-1), prototypes, config["temperature"],
                           balanced)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        model.eval()
        val_loss = 0.0
        for x, y in batches(val_idx, -(-len(val_idx) // bs)):
            with torch.no_grad():
                z = model(x)  # (B, N, E)
                correct += int((label_patches(z, prototypes).argmax(-1) == y).sum())
                seen += int(y.numel())
                val_loss += float(tsupcon(z.reshape(-1, prototypes.shape[1]), y.reshape(-1), prototypes,
                                          config["temperature"], balanced)) * len(x)
        acc = correct / seen if seen else float("nan")
        metrics = {"phase": "align", "epoch": epoch, "loss": total / max(steps, 1),
                   "val_loss": val_loss / len(val_idx) if len(val_idx) else float("nan"), "val_patch_accuracy": acc,
                   "val_majority_share": majority, "lr": sched.get_last_lr()[0],
                   "checkpoint_score": acc if seen else float(epoch)}
        report_epoch(model, metrics, config, rank0)


def collapsed(metrics: dict) -> bool:
    """Whether an epoch's validation patch accuracy is under half the share of the commonest
    pseudo label: what a module that maps every patch to one (other) prototype scores."""
    return bool(metrics.get("val_patch_accuracy", 1.0) < 0.5 * metrics.get("val_majority_share", 0.0))


def _shown(metrics: dict) -> dict:
    return {"loss": round(metrics["loss"], 4), "val_acc": round(metrics["val_patch_accuracy"], 3)}


def text_prototypes(clip_name: str, classes: list[str], settings, models_dir=None):
    """(1 + C, E) unit text features of the background prompt and the class prompts, from the CLIP
    the pseudo labels were made with, and the prompts."""
    from ..models.clip import load_clip, text_features
    from ..models.registry import resolve

    prompts = [settings.background_prompt, *[settings.template.format(c=c) for c in classes]]
    return text_features(load_clip(resolve(clip_name, models_dir)), prompts).cpu().numpy().astype(np.float32), prompts


def train_align(cfg, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit the alignment module on ``cfg.pseudo`` + features and write ``cfg.out`` (see module docstring).

    Returns:
        the ``head.json`` content.

    Raises:
        TrainDataError: nothing to train on; ModelNotFoundError: the pseudo run's CLIP is gone.
    """
    import ray.data

    from ..heads.checkpoint import write_head_json
    from ..models.registry import models_dir_from_env

    pseudo_dir = Path(cfg.pseudo)
    features_dir = Path(cfg.features) if cfg.features is not None else pseudo_dir.parent / "features"
    info = pseudo_info(pseudo_dir, features_dir)
    classes = info["classes"]
    clip_name = next((k for k in info["models"] if k.startswith("clip:")), None)
    if clip_name is None:
        raise TrainDataError(f"{features_dir} does not name the CLIP its pseudo labels came from")
    prototypes, prompts = text_prototypes(clip_name, classes, cfg.fmbseg, models_dir_from_env(cfg.runtime.models_dir))
    out = Path(cfg.out)
    workers, use_gpu = prepare_run(out, cfg.runtime, cfg.workers, log)
    log(f"train align: {info['images']} images of {pseudo_dir}, {len(classes)} classes + background; "
        f"{cfg.kind} module {info['dim']} → {prototypes.shape[1]}; {workers} worker(s) on {'GPU' if use_gpu else 'CPU'}")
    ds = ray.data.from_items([{"name": n} for n in info["names"]], override_num_blocks=len(info["names"]))
    ds = ds.map_batches(_read_pairs, batch_size=1, fn_kwargs={
        "pseudo_dir": str(pseudo_dir), "features_dir": str(features_dir), "classes": len(classes),
        "fraction": cfg.fmbseg.stage12_fraction, "seed": cfg.seed, "val_fraction": cfg.val_fraction})
    embeddings = {"fingerprint": info["fingerprint"], "models": info["models"]}
    config = {"classes": classes, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
              "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "temperature": cfg.temperature,
              "loss": cfg.loss, "seed": cfg.seed, "embeddings": embeddings,
              "head_args": {"in_dim": info["dim"], "out_dim": int(prototypes.shape[1]), "kind": cfg.kind,
                            "heads": cfg.heads, "mlp_ratio": cfg.mlp_ratio},
              "extra": {"method": "fmbseg", "prototypes": prototypes.tolist(), "prompts": prompts}}
    result, history = fit_phase(_align_loop, "align", config, {"train": ds}, out, workers, use_gpu, log, _shown)
    shutil.copy(Path(result.checkpoint.path) / "head.pt", out / "align.pt")
    kept = result.best_checkpoints or [(result.checkpoint, result.metrics)]
    best_ckpt, best = max(kept, key=lambda cm: (cm[1]["checkpoint_score"], cm[1]["epoch"]))
    shutil.copy(Path(best_ckpt.path) / "head.pt", out / "best.pt")
    summary = {"method": "fmbseg", "classes": classes, "prompts": prompts, "embeddings": embeddings,
               "settings": cfg.model_dump(mode="json"), "metrics": history,
               "best": {"epoch": best["epoch"], "val_patch_accuracy": best["val_patch_accuracy"]}}
    write_head_json(out, summary)
    log(f"train align: best epoch {best['epoch'] + 1}/{cfg.epochs} (validation patch accuracy against the pseudo "
        f"labels {best['val_patch_accuracy']:.3f}); every epoch's metrics in {out / 'head.json'}")
    if collapsed(best):
        log(f"train align: warning: validation accuracy {best['val_patch_accuracy']:.3f} is under half the share of "
            f"the commonest label ({best['val_majority_share']:.3f}): the module has likely collapsed onto one "
            f"prototype; try loss tsupcon_balanced (--set loss=…, align.loss in a run config; README, FMbSeg)")
    return summary
