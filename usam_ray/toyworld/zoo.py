"""The toy model zoo: tiny SAM, CLIP and DINOv2 of the real architectures, trained on toy scenes.

``train_zoo(out)`` trains all three on this CPU in minutes with fixed seeds and writes them in
the real on-disk formats (segment_anything state dict + architecture JSON; transformers
``save_pretrained`` folders with a locally built tokenizer), so the registry loads them as
``sam:toy``, ``clip:toy`` and ``dino:toy``. Each model has its own quality figure, measured on
held-out scenes (a seed no training uses):

- SAM: mean mask IoU of the best-by-predicted-IoU multimask output for one interior point per
  ground-truth instance;
- CLIP: zero-shot accuracy of instance crops against "a photo of a {class}" prompts (chance 20 %);
- DINOv2: accuracy (and balanced accuracy) of a class-balanced linear probe (weighted least
  squares on one-hot targets) classifying 8×8 patches into background + 5 classes, fitted on
  scenes no training uses (``PROBE_SEED``), scored on the held-out ones.

One module per family trains and measures it (``toy_sam``, ``toy_clip``, ``toy_dino``; shared
pieces in ``common``); this one runs the three in order, measures them and writes the zoo.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..data.toyscenes import Scene
from .common import EVAL_SEED, PROBE_SEED, TRAIN_SEED, scene_pool
from .toy_clip import CLIP_SIZE, clip_dense_quality, clip_quality, finetune_dense, train_clip
from .toy_dino import dino_quality, train_dino
from .toy_sam import TOY_SAM_ARCH, finetune_sam_prompts, sam_prompt_quality, sam_quality, train_sam


@dataclass
class TrainSettings:
    """Steps, batch sizes and learning rates of the three trainings (defaults: the shipped zoo)."""

    pool: int = 3000
    sam_steps: int = 2400
    sam_batch: int = 16
    sam_prompts: int = 4
    sam_lr: float = 8e-4
    sam_prompt_steps: int = 300
    sam_prompt_batch: int = 8
    sam_prompt_prompts: int = 4
    sam_prompt_lr: float = 3e-3
    sam_prompt_pool: int = 300
    clip_steps: int = 1500
    clip_batch: int = 96
    clip_lr: float = 1e-3
    dino_steps: int = 6400
    dino_batch: int = 24
    dino_lr: float = 2e-3
    dino_clip_weight: float = 3.0
    clip_dense_steps: int = 1500
    clip_dense_batch: int = 16
    clip_dense_lr: float = 1e-3
    clip_dense_pool: int = 600
    clip_dense_crop_weight: float = 1.0

    @classmethod
    def quick(cls) -> "TrainSettings":
        """A few seconds per model: for tests that only need to see the loss fall (the prompt
        fine-tune only runs: a 40-step SAM's decoder knows too little to learn prompts for)."""
        return cls(pool=60, sam_steps=40, sam_batch=4, sam_prompts=2, sam_prompt_steps=4, sam_prompt_batch=4,
                   sam_prompt_pool=20, clip_steps=80, clip_batch=32,
                   dino_steps=30, dino_batch=4, clip_dense_steps=200, clip_dense_batch=8, clip_dense_lr=3e-3,
                   clip_dense_pool=60)


def save_zoo(out: Path, sam, clip, tokenizer, dino, quality: dict) -> None:
    """Write the three models in their real formats plus ``usam-ray-models.json`` and ``quality.json``."""
    from transformers import CLIPImageProcessor

    from ..models.registry import CLIP_MEAN, CLIP_STD, MANIFEST, get_spec
    from ..models.sam import save_sam

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_sam(sam, TOY_SAM_ARCH, out / get_spec("sam:toy").local_name,
             {"note": "tiny SAM trained on usam-ray toy scenes", "quality": quality.get("sam_mean_iou")})
    clip_dir = out / get_spec("clip:toy").local_name
    clip.save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE},
                       image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(clip_dir)
    _save_dino(out, dino)
    (out / MANIFEST).write_text(json.dumps({"defaults": {"sam": "sam:toy", "clip": "clip:toy", "dino": "dino:toy"}},
                                           indent=2))
    (out / "quality.json").write_text(json.dumps(quality, indent=2))


def _save_dino(out: Path, dino) -> None:
    from transformers import BitImageProcessor

    from ..models.registry import IMAGENET_MEAN, IMAGENET_STD, get_spec

    dino_dir = Path(out) / get_spec("dino:toy").local_name
    dino.save_pretrained(dino_dir)
    BitImageProcessor(size={"shortest_edge": 128}, crop_size={"height": 128, "width": 128}, do_center_crop=True,
                      image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(dino_dir)


def _ends(curve: list[float]) -> list[float]:
    """Mean of the first and of the last tenth of a loss curve."""
    k = max(1, len(curve) // 10)
    return [float(np.mean(curve[:k])), float(np.mean(curve[-k:]))]


def train_zoo(out: Path, settings: TrainSettings = TrainSettings(), log: Callable[[str], None] = print,
              eval_scenes: int = 200) -> dict:
    """Train SAM (then its prompt-only fine-tune), then CLIP (then its dense features), then
    DINOv2 distilled from that SAM and CLIP; measure each, save to ``out``.

    Returns:
        quality figures and per-model loss curves' first/last means.
    """
    import torch

    t0 = time.time()
    log(f"toy zoo: generating {settings.pool} training scenes (seed {TRAIN_SEED})")
    pool = scene_pool(settings.pool, TRAIN_SEED)
    held_out = scene_pool(eval_scenes, EVAL_SEED)
    sam, sam_losses = train_sam(pool, settings.sam_steps, settings.sam_batch, settings.sam_prompts,
                                settings.sam_lr, TRAIN_SEED + 1, log)
    # boxes, negative points and mask prompts (UO-SAM's refinement uses them); point outputs unchanged
    sam, prompt_losses = finetune_sam_prompts(sam, pool[:settings.sam_prompt_pool], settings.sam_prompt_steps,
                                              settings.sam_prompt_batch, settings.sam_prompt_prompts,
                                              settings.sam_prompt_lr, TRAIN_SEED + 6, log)
    clip, tok, clip_losses = train_clip(pool, settings.clip_steps, settings.clip_batch, settings.clip_lr,
                                        TRAIN_SEED + 2, log)
    # teach CLIP's patches and crop embeddings what they show (what FMbSeg's Stage 1 reads from it)
    clip, dense_losses = _finetune_clip_dense(pool[:settings.clip_dense_pool], clip, tok, settings, log)
    # last, from the SAM and the CLIP that ship: what ``redistil_dino`` repeats alone
    dino, dino_losses = _distil_dino(pool, sam, clip, settings, log)
    quality = measure(sam, clip, tok, dino, held_out, scene_pool(min(300, settings.pool), PROBE_SEED))
    quality.update({"train_seconds": round(time.time() - t0, 1), "torch": torch.__version__,
                    "loss_first_last": {"sam": _ends(sam_losses), "sam_prompts": _ends(prompt_losses),
                                        "clip": _ends(clip_losses), "clip_dense": _ends(dense_losses),
                                        "dino": _ends(dino_losses)},
                    "settings": settings.__dict__})
    save_zoo(out, sam, clip, tok, dino, quality)
    log(f"toy zoo: written to {out} in {quality['train_seconds']}s")
    return quality


def _finetune_clip_dense(pool: list[Scene], clip, tok, settings: TrainSettings, log: Callable[[str], None]):
    return finetune_dense(clip, tok, pool, settings.clip_dense_steps, settings.clip_dense_batch,
                          settings.clip_dense_lr, TRAIN_SEED + 5, log, crop_weight=settings.clip_dense_crop_weight)


def _distil_dino(pool: list[Scene], sam, clip, settings: TrainSettings, log: Callable[[str], None]):
    return train_dino(pool, sam, clip, settings.dino_steps, settings.dino_batch, settings.dino_lr, TRAIN_SEED + 3,
                      log, settings.dino_clip_weight)


def redistil_dino(source: Path, out: Path, settings: TrainSettings = TrainSettings(),
                  log: Callable[[str], None] = print, eval_scenes: int = 200) -> dict:
    """``train_zoo``'s last step alone: distil a new DINOv2 from the SAM and CLIP of the zoo in
    ``source`` (the same pool, seed and settings) and write a zoo to ``out``: ``source``'s SAM and
    CLIP files copied unchanged, the new DINOv2, and ``quality.json`` with every figure measured
    again (``source``'s loss curves and settings kept, the DINOv2's replaced).

    Raises:
        ValueError: ``out`` is ``source``.
    """
    def step(sam, clip, pool):
        dino, losses = _distil_dino(pool, sam, clip.model, settings, log)
        _save_dino(out, dino)
        return clip.model, dino, losses

    return _retrain_one(source, out, "dino", ("sam:toy", "clip:toy"), step, settings, log, eval_scenes,
                        "`usam-ray toy train-zoo --dino-only`")


def refinetune_clip_dense(source: Path, out: Path, settings: TrainSettings = TrainSettings(),
                          log: Callable[[str], None] = print, eval_scenes: int = 200) -> dict:
    """``train_zoo``'s CLIP dense fine-tune (``finetune_dense``) alone, applied to the CLIP of the
    zoo in ``source`` (the same pool, seed and settings), written to ``out`` with ``source``'s SAM
    and DINOv2 copied unchanged and ``quality.json`` measured again (the ``clip_dense`` loss curve
    and settings replaced). The DINOv2 stays the one distilled from ``source``'s CLIP: ``--dino-only``
    from ``out`` re-distils it from the new one.

    Raises:
        ValueError: ``out`` is ``source``.
    """
    import shutil

    from ..models.dino import load_dino
    from ..models.registry import get_spec, resolve

    source, out = Path(source), Path(out)

    def step(sam, clip, pool):
        model, losses = _finetune_clip_dense(pool, clip.model, clip.tokenizer, settings, log)
        local = get_spec("clip:toy").local_name
        shutil.copytree(source / local, out / local, dirs_exist_ok=True)  # tokenizer and processor
        model.save_pretrained(out / local)
        return model, load_dino(resolve("dino:toy", source)).model, losses

    return _retrain_one(source, out, "clip_dense", ("sam:toy", "dino:toy"), step, settings, log, eval_scenes,
                        "`usam-ray toy train-zoo --clip-dense-only`", pool_size=settings.clip_dense_pool)


def _retrain_one(source: Path, out: Path, what: str, copied: tuple[str, ...], step, settings: TrainSettings,
                 log: Callable[[str], None], eval_scenes: int, command: str, pool_size: Optional[int] = None) -> dict:
    """One step of ``train_zoo`` again on the zoo in ``source``, written to ``out``: ``copied``
    models copied byte for byte, ``step(sam, clip, pool)`` → (clip model, dino model, losses)
    writes the retrained one, every figure measured again; ``quality.json`` keeps ``source``'s
    curves and settings but ``what``'s (``what`` is a ``loss_first_last`` key and a settings prefix)
    and records the run under ``{what}_retrain``."""
    import shutil

    import torch

    from ..models.clip import load_clip
    from ..models.registry import MANIFEST, get_spec, resolve, shipped_zoo
    from ..models.sam import load_sam

    source, out = Path(source), Path(out)
    if source.resolve() == out.resolve():
        raise ValueError(f"--out {out} is the zoo the models are read from: write the new zoo elsewhere")
    t0 = time.time()
    sam = load_sam(resolve("sam:toy", source)).eval()
    clip = load_clip(resolve("clip:toy", source))
    n = settings.pool if pool_size is None else pool_size
    log(f"toy zoo: {what} again from the zoo in {source}; generating {n} training scenes (seed {TRAIN_SEED})")
    out.mkdir(parents=True, exist_ok=True)
    for name in copied:
        local = get_spec(name).local_name
        if (source / local).is_dir():
            shutil.copytree(source / local, out / local, dirs_exist_ok=True)
            continue
        shutil.copy2(source / local, out / local)
        arch = f"{Path(local).stem}.json"  # the SAM's architecture file
        if (source / arch).is_file():
            shutil.copy2(source / arch, out / arch)
    if (source / MANIFEST).is_file():
        shutil.copy2(source / MANIFEST, out / MANIFEST)
    clip_model, dino, losses = step(sam, clip, scene_pool(n, TRAIN_SEED))
    quality = json.loads((source / "quality.json").read_text()) if (source / "quality.json").is_file() else {}
    quality.update(measure(sam, clip_model, clip.tokenizer, dino, scene_pool(eval_scenes, EVAL_SEED),
                           scene_pool(min(300, settings.pool), PROBE_SEED)))
    quality.setdefault("loss_first_last", {})[what] = _ends(losses)
    quality.setdefault("settings", {}).update({k: v for k, v in settings.__dict__.items() if k.startswith(what)})
    where = "the shipped zoo" if source.resolve() == shipped_zoo().resolve() else str(source)
    quality[f"{what}_retrain"] = {"seconds": round(time.time() - t0, 1), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "note": f"{command} from {where}"}
    (out / "quality.json").write_text(json.dumps(quality, indent=2))
    log(f"toy zoo: written to {out} in {quality[f'{what}_retrain']['seconds']}s")
    return quality


def measure(sam, clip, tokenizer, dino, held_out: list[Scene], probe_train: list[Scene]) -> dict:
    """The three quality figures on ``held_out`` scenes (see module docstring)."""
    acc, balanced = dino_quality(dino, probe_train, held_out)
    return {
        "sam_mean_iou": round(sam_quality(sam, held_out), 4),
        **{f"sam_{k}_iou": round(v, 4) for k, v in sam_prompt_quality(sam, held_out).items()},
        "clip_zero_shot_accuracy": round(clip_quality(clip, tokenizer, held_out), 4),
        **{k: round(v, 4) for k, v in clip_dense_quality(clip, tokenizer, held_out).items()},
        "dino_probe_patch_accuracy": round(acc, 4),
        "dino_probe_balanced_accuracy": round(balanced, 4),
        "held_out_scenes": len(held_out),
        "held_out_seed": EVAL_SEED,
    }


def check_zoo(models_dir: Optional[Path] = None, scenes: int = 200) -> dict:
    """Load ``sam:toy``, ``clip:toy`` and ``dino:toy`` through the registry (the shipped zoo unless
    ``models_dir`` holds others) and measure them on freshly generated held-out scenes."""
    from ..models.clip import load_clip
    from ..models.dino import load_dino
    from ..models.registry import resolve
    from ..models.sam import load_sam

    sam = load_sam(resolve("sam:toy", models_dir))
    clip = load_clip(resolve("clip:toy", models_dir))
    dino = load_dino(resolve("dino:toy", models_dir))
    out = measure(sam, clip.model, clip.tokenizer, dino.model, scene_pool(scenes, EVAL_SEED),
                  scene_pool(300, PROBE_SEED))
    out["models"] = {n: resolve(n, models_dir).location for n in ("sam:toy", "clip:toy", "dino:toy")}
    return out
