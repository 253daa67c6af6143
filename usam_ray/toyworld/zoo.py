"""The toy model zoo: tiny SAM, CLIP and DINOv2 of the real architectures, trained on toy scenes.

``train_zoo(out)`` trains all three on this CPU in minutes with fixed seeds and writes them in
the real on-disk formats (segment_anything state dict + architecture JSON; transformers
``save_pretrained`` folders with a locally built tokenizer), so the registry loads them as
``sam:toy``, ``clip:toy`` and ``dino:toy``. Each model has its own quality figure, measured on
held-out scenes (a seed no training uses):

- SAM: mean mask IoU of the best-by-predicted-IoU multimask output for one interior point per
  ground-truth instance;
- CLIP: zero-shot accuracy of instance crops against "a photo of a {class}" prompts (chance 20 %);
- DINOv2: accuracy (and class-balanced accuracy) of a linear probe (least squares on one-hot
  targets) classifying 8×8 patches into background + 5 classes, fitted on training scenes,
  scored on held-out ones.

DINOv2 is trained by feature distillation from the trained toy SAM image encoder (its patch
grid is the same 16×16), so its patch features carry the objects SAM sees.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..data.toyscenes import CLASSES, Scene, scene, single_object

TOY_SAM_ARCH = {
    "img_size": 128, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 4, "window_size": 8,
    "global_attn_indexes": [1, 3], "prompt_embed_dim": 64, "decoder_depth": 2, "decoder_mlp_dim": 256,
    "decoder_heads": 4, "iou_head_hidden_dim": 64,
}
TRAIN_SEED = 1000
EVAL_SEED = 2_000_000  # held-out scenes: no training seed comes near it
PROBE_SEED = 3_000_000  # scenes the DINOv2 linear probe is fitted on (not the training pool)
CLIP_SIZE = 64
CAPTION_MAX = 32


@dataclass
class TrainSettings:
    """Steps, batch sizes and learning rates of the three trainings (defaults: the shipped zoo)."""

    pool: int = 3000
    sam_steps: int = 2400
    sam_batch: int = 16
    sam_prompts: int = 4
    sam_lr: float = 8e-4
    clip_steps: int = 1500
    clip_batch: int = 96
    clip_lr: float = 1e-3
    dino_steps: int = 800
    dino_batch: int = 24
    dino_lr: float = 1e-3

    @classmethod
    def quick(cls) -> "TrainSettings":
        """A few seconds per model: for tests that only need to see the loss fall."""
        return cls(pool=60, sam_steps=40, sam_batch=4, sam_prompts=2, clip_steps=80, clip_batch=32,
                   dino_steps=30, dino_batch=4)


def scene_pool(n: int, seed: int, size: int = 128) -> list[Scene]:
    """``n`` multi-object scenes from ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    return [scene(rng, size) for _ in range(n)]


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of a pixel deep inside ``mask``: erode until one more step would empty it."""
    m = mask.copy()
    while True:
        e = m.copy()
        e[1:] &= m[:-1]
        e[:-1] &= m[1:]
        e[:, 1:] &= m[:, :-1]
        e[:, :-1] &= m[:, 1:]
        if not e.any():
            break
        m = e
    ys, xs = np.nonzero(m)
    k = len(ys) // 2
    return float(xs[k]), float(ys[k])


class _Optimiser:
    """AdamW + one-cycle schedule + loss bookkeeping and progress lines, shared by the three trainings."""

    def __init__(self, params, lr: float, steps: int, name: str, log: Callable[[str], None],
                 clip_norm: Optional[float] = None) -> None:
        import torch

        self.params = list(params)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=1e-4)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.1)
        self.steps, self.name, self.log, self.clip_norm = steps, name, log, clip_norm
        self.losses: list[float] = []
        self.start = time.time()

    def step(self, loss, recorded: float) -> None:
        """Back-propagate ``loss``, update, record ``recorded`` and log every tenth of the run."""
        import torch

        self.opt.zero_grad()
        loss.backward()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.opt.step()
        self.sched.step()
        self.losses.append(recorded)
        n = len(self.losses)
        if n % max(1, self.steps // 10) == 0:
            self.log(f"{self.name}: step {n}/{self.steps} loss {np.mean(self.losses[-50:]):.4f} "
                     f"({time.time() - self.start:.0f}s)")


# ---------------------------------------------------------------------------------------------- SAM


def _sam_losses(torch, logits, target, iou_pred):
    """SAM's recipe: focal (×20) + dice per output, min over the multimask outputs, plus token 0;
    IoU head regressed onto each output's actual IoU.

    Args:
        logits: (N, 4, h, w) mask logits (token 0 = single output, 1..3 = multimask).
        target: (N, h, w) float {0, 1}.
        iou_pred: (N, 4).
    """
    import torch.nn.functional as F

    t = target[:, None].expand_as(logits)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    pt = p * t + (1 - p) * (1 - t)
    focal = (0.25 * t + 0.75 * (1 - t)) * (1 - pt) ** 2 * ce
    focal = focal.flatten(2).mean(-1)
    inter = (p * t).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    per = 20 * focal + dice  # (N, 4)
    mask_loss = per[:, 1:].min(dim=1).values + per[:, 0]
    with torch.no_grad():
        b = logits > 0
        tb = t > 0.5
        actual = (b & tb).flatten(2).sum(-1) / ((b | tb).flatten(2).sum(-1)).clamp(min=1)
    iou_loss = F.mse_loss(iou_pred, actual.float(), reduction="none").mean(-1)
    return (mask_loss + iou_loss).mean(), mask_loss.mean().item()


def _sam_batch(rng: np.random.Generator, pool: list[Scene], batch: int, prompts: int):
    """Images (B, 128, 128, 3), prompt points (B, K, 2) and target masks (B, K, 128, 128)."""
    imgs, pts, tgts = [], [], []
    while len(imgs) < batch:
        sc = pool[int(rng.integers(0, len(pool)))]
        if len(sc.instances) == 0:
            continue
        img, inst = sc.image, sc.instances
        if rng.random() < 0.5:  # flips as augmentation
            img, inst = img[:, ::-1], inst[:, :, ::-1]
        p, t = [], []
        for _ in range(prompts):
            k = int(rng.integers(0, len(inst)))
            ys, xs = np.nonzero(inst[k])
            j = int(rng.integers(0, len(ys)))
            p.append((xs[j], ys[j]))
            t.append(inst[k])
        imgs.append(np.ascontiguousarray(img))
        pts.append(p)
        tgts.append(np.stack(t))
    return np.stack(imgs), np.asarray(pts, np.float32), np.stack(tgts)


def train_sam(pool: list[Scene], steps: int, batch: int, prompts: int, lr: float, seed: int,
              log: Callable[[str], None] = print):
    """Train a toy SAM from scratch on point prompt → instance mask pairs.

    Returns:
        (sam in eval mode, list of per-step mask losses).
    """
    import torch
    import torch.nn.functional as F

    from ..models.sam import build_sam

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sam = build_sam(TOY_SAM_ARCH).train()
    opt = _Optimiser(sam.parameters(), lr, steps, "sam", log, clip_norm=1.0)
    for _ in range(steps):
        imgs, pts, tgts = _sam_batch(rng, pool, batch, prompts)
        x = sam.preprocess(torch.as_tensor(imgs).permute(0, 3, 1, 2).float())
        feats = sam.image_encoder(x)
        pe = sam.prompt_encoder.get_dense_pe()
        coords = torch.as_tensor(pts).reshape(-1, 1, 2)
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int)
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        sparse = sparse.reshape(batch, prompts, *sparse.shape[1:])
        dense = dense.reshape(batch, prompts, *dense.shape[1:])
        logits, ious = [], []
        for b in range(batch):
            lo, io = sam.mask_decoder.predict_masks(feats[b:b + 1], pe, sparse[b], dense[b])
            logits.append(lo)
            ious.append(io)
        logits = torch.cat(logits)  # (B*K, 4, 64, 64)
        target = torch.as_tensor(tgts).reshape(-1, 1, 128, 128).float()
        target = F.interpolate(target, size=logits.shape[-2:], mode="area")[:, 0]
        target = (target > 0.5).float()
        loss, mask_loss = _sam_losses(torch, logits, target, torch.cat(ious))
        opt.step(loss, mask_loss)
    return sam.eval(), opt.losses


def sam_quality(sam, scenes: list[Scene]) -> float:
    """Mean IoU of SAM's best multimask output (by predicted IoU) for one interior point per instance."""
    import torch

    from ..methods.sam_embed import SamMaskEmbedder, prepare_image

    embedder = SamMaskEmbedder(sam)
    ious = []
    with torch.inference_mode():
        for sc in scenes:
            if len(sc.instances) == 0:
                continue
            padded, size = prepare_image(sc.image, embedder.image_size)
            x = torch.as_tensor(padded[None]).permute(0, 3, 1, 2).float()
            feats = sam.image_encoder(sam.preprocess(x[..., : size[0], : size[1]]))
            scale = np.array([size[1] / sc.image.shape[1], size[0] / sc.image.shape[0]])
            pts = np.array([interior_point(m) for m in sc.instances]) * scale
            low, iou, _ = embedder.decode_points(feats, torch.as_tensor(pts, dtype=torch.float32))
            best = iou.argmax(1)
            masks = sam.postprocess_masks(low[torch.arange(len(best)), best][:, None], size, sc.image.shape[:2])[:, 0] > 0
            m = masks.numpy()
            inter = (m & sc.instances).sum((1, 2))
            union = (m | sc.instances).sum((1, 2))
            ious.extend((inter / np.maximum(union, 1)).tolist())
    return float(np.mean(ious))


# --------------------------------------------------------------------------------------------- CLIP


def caption(rng: np.random.Generator, cls: int, colour: str) -> str:
    """"a photo of a {colour} {class}" or, half the time, "a photo of a {class}"."""
    name = CLASSES[cls - 1]
    return f"a photo of a {colour} {name}" if rng.random() < 0.5 else f"a photo of a {name}"


def crop(rng: Optional[np.random.Generator], image: np.ndarray, mask: np.ndarray, size: int = CLIP_SIZE,
         margin: float = 1.4) -> np.ndarray:
    """Square crop around ``mask``'s box (× margin, jittered when ``rng``), resized to ``size``."""
    from PIL import Image

    ys, xs = np.nonzero(mask)
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    side = max(xs.max() - xs.min(), ys.max() - ys.min(), 8) * (rng.uniform(1.1, 1.8) if rng is not None else margin)
    if rng is not None:
        cx += rng.uniform(-0.1, 0.1) * side
        cy += rng.uniform(-0.1, 0.1) * side
    box = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
    return np.asarray(Image.fromarray(image).crop(box).resize((size, size), Image.BILINEAR))


def _clip_config():
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    from ..models.tiny import byte_level_vocab

    vocab, _ = byte_level_vocab()
    text = CLIPTextConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=CAPTION_MAX,
                          bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                          pad_token_id=vocab["<|endoftext|>"], projection_dim=64)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                              image_size=CLIP_SIZE, patch_size=8, projection_dim=64)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64)


def _clip_pixels(torch, crops: np.ndarray):
    from ..models.registry import CLIP_MEAN, CLIP_STD

    x = torch.as_tensor(crops).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def train_clip(pool: list[Scene], steps: int, batch: int, lr: float, seed: int, log: Callable[[str], None] = print):
    """Contrastive training on instance crops and single-object images with captions.

    Captions repeat inside a batch, so the targets are soft: every pair with the same caption
    counts as a positive (row-normalised), in both directions.

    Returns:
        (CLIPModel, tokenizer, list of per-step losses).
    """
    import torch
    import torch.nn.functional as F
    from transformers import CLIPModel

    from ..models.tiny import build_tokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CLIPModel(_clip_config()).train()
    tok = build_tokenizer(CAPTION_MAX)
    opt = _Optimiser(model.parameters(), lr, steps, "clip", log)
    for _ in range(steps):
        crops, texts = [], []
        while len(crops) < batch:
            if rng.random() < 0.3:
                sc = single_object(rng, 128)
            else:
                sc = pool[int(rng.integers(0, len(pool)))]
            if len(sc.instances) == 0:
                continue
            k = int(rng.integers(0, len(sc.instances)))
            crops.append(crop(rng, sc.image, sc.instances[k]))
            texts.append(caption(rng, int(sc.classes[k]), sc.colours[k]))
        ids = tok(texts, padding=True, return_tensors="pt")
        out = model(**ids, pixel_values=_clip_pixels(torch, np.stack(crops)))
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(out.logits_per_image, target) + F.cross_entropy(out.logits_per_text, target))
        opt.step(loss, loss.item())
    return model.eval(), tok, opt.losses


def clip_quality(model, tokenizer, scenes: list[Scene]) -> float:
    """Zero-shot accuracy of instance crops (fixed margin) against "a photo of a {class}"."""
    import torch

    from ..models.clip import projected

    crops, labels = [], []
    for sc in scenes:
        for m, c in zip(sc.instances, sc.classes):
            crops.append(crop(None, sc.image, m))
            labels.append(int(c) - 1)
    with torch.inference_mode():
        text = tokenizer([f"a photo of a {c}" for c in CLASSES], padding=True, return_tensors="pt")
        t = projected(model.get_text_features(**text))
        t = t / t.norm(dim=-1, keepdim=True)
        correct = 0
        for s in range(0, len(crops), 256):
            v = projected(model.get_image_features(pixel_values=_clip_pixels(torch, np.stack(crops[s:s + 256]))))
            v = v / v.norm(dim=-1, keepdim=True)
            correct += int(((v @ t.T).argmax(1).numpy() == np.array(labels[s:s + 256])).sum())
    return correct / len(crops)


# -------------------------------------------------------------------------------------------- DINOv2


def _dino_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2, patch_size=8,
                        image_size=128)


def _dino_pixels(torch, images: np.ndarray):
    from ..models.registry import IMAGENET_MEAN, IMAGENET_STD

    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def dino_patch_features(model, images: np.ndarray):
    """(B, 128, 128, 3) uint8 → (B, 256, D) patch tokens (CLS dropped), no grad."""
    import torch

    with torch.inference_mode():
        return model(pixel_values=_dino_pixels(torch, images)).last_hidden_state[:, 1:]


def train_dino(pool: list[Scene], teacher_sam, steps: int, batch: int, lr: float, seed: int,
               log: Callable[[str], None] = print):
    """Distil the toy SAM image encoder's 16×16 feature map into DINOv2 patch tokens (cosine loss
    through a linear head that is dropped afterwards).

    Returns:
        (Dinov2Model, list of per-step losses).
    """
    import torch
    import torch.nn.functional as F
    from transformers import Dinov2Model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Dinov2Model(_dino_config()).train()
    head = torch.nn.Linear(96, int(teacher_sam.image_encoder.neck[0].out_channels))
    opt = _Optimiser(list(model.parameters()) + list(head.parameters()), lr, steps, "dino", log)
    for _ in range(steps):
        idx = rng.integers(0, len(pool), batch)
        imgs = np.stack([pool[i].image for i in idx])
        with torch.no_grad():
            x = teacher_sam.preprocess(torch.as_tensor(imgs).permute(0, 3, 1, 2).float())
            target = teacher_sam.image_encoder(x).flatten(2).transpose(1, 2)  # (B, 256, C)
        pred = head(model(pixel_values=_dino_pixels(torch, imgs)).last_hidden_state[:, 1:])
        loss = 1 - F.cosine_similarity(pred, target, dim=-1).mean()
        opt.step(loss, loss.item())
    return model.eval(), opt.losses


def patch_labels(semantic: np.ndarray, patch: int = 8) -> np.ndarray:
    """(H, W) class map → (H/p · W/p,) majority class per patch."""
    h, w = semantic.shape
    blocks = semantic.reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    return np.array([np.bincount(b, minlength=len(CLASSES) + 1).argmax() for b in blocks])


def dino_quality(model, train: list[Scene], test: list[Scene]) -> tuple[float, float]:
    """Linear-probe patch accuracy (background + 5 classes): least squares on one-hot targets
    fitted on ``train`` scenes' patch features, scored on ``test`` scenes' patches.

    Returns:
        (accuracy, class-balanced accuracy = mean of the 6 per-class recalls; most patches are
        background, so the balanced figure is the informative one).
    """

    def features(scenes):
        feats = [dino_patch_features(model, np.stack([s.image for s in scenes[i:i + 64]])).numpy()
                 for i in range(0, len(scenes), 64)]
        x = np.concatenate(feats).reshape(-1, feats[0].shape[-1])
        y = np.concatenate([patch_labels(s.semantic) for s in scenes])
        return np.hstack([x, np.ones((len(x), 1))]), y

    x, y = features(train)
    onehot = np.eye(len(CLASSES) + 1)[y]
    w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ onehot)
    xt, yt = features(test)
    pred = (xt @ w).argmax(1)
    recalls = [float((pred[yt == k] == k).mean()) for k in range(len(CLASSES) + 1) if (yt == k).any()]
    return float((pred == yt).mean()), float(np.mean(recalls))


# ---------------------------------------------------------------------------------------- the zoo


def save_zoo(out: Path, sam, clip, tokenizer, dino, quality: dict) -> None:
    """Write the three models in their real formats plus ``usam-ray-models.json`` and ``quality.json``."""
    from transformers import BitImageProcessor, CLIPImageProcessor

    from ..models.registry import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, MANIFEST, get_spec
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
    dino_dir = out / get_spec("dino:toy").local_name
    dino.save_pretrained(dino_dir)
    BitImageProcessor(size={"shortest_edge": 128}, crop_size={"height": 128, "width": 128}, do_center_crop=True,
                      image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(dino_dir)
    (out / MANIFEST).write_text(json.dumps({"defaults": {"sam": "sam:toy", "clip": "clip:toy", "dino": "dino:toy"}},
                                           indent=2))
    (out / "quality.json").write_text(json.dumps(quality, indent=2))


def train_zoo(out: Path, settings: TrainSettings = TrainSettings(), log: Callable[[str], None] = print,
              eval_scenes: int = 200) -> dict:
    """Train SAM, then CLIP, then DINOv2 (distilled from that SAM), measure each, save to ``out``.

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
    clip, tok, clip_losses = train_clip(pool, settings.clip_steps, settings.clip_batch, settings.clip_lr,
                                        TRAIN_SEED + 2, log)
    dino, dino_losses = train_dino(pool, sam, settings.dino_steps, settings.dino_batch, settings.dino_lr,
                                   TRAIN_SEED + 3, log)
    quality = measure(sam, clip, tok, dino, held_out, scene_pool(min(300, settings.pool), PROBE_SEED))

    def ends(curve: list[float]) -> list[float]:
        k = max(1, len(curve) // 10)
        return [float(np.mean(curve[:k])), float(np.mean(curve[-k:]))]

    quality.update({"train_seconds": round(time.time() - t0, 1), "torch": torch.__version__,
                    "loss_first_last": {"sam": ends(sam_losses), "clip": ends(clip_losses), "dino": ends(dino_losses)},
                    "settings": settings.__dict__})
    save_zoo(out, sam, clip, tok, dino, quality)
    log(f"toy zoo: written to {out} in {quality['train_seconds']}s")
    return quality


def measure(sam, clip, tokenizer, dino, held_out: list[Scene], probe_train: list[Scene]) -> dict:
    """The three quality figures on ``held_out`` scenes (see module docstring)."""
    acc, balanced = dino_quality(dino, probe_train, held_out)
    return {
        "sam_mean_iou": round(sam_quality(sam, held_out), 4),
        "clip_zero_shot_accuracy": round(clip_quality(clip, tokenizer, held_out), 4),
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
