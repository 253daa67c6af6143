"""The toy CLIP: a transformers ``CLIPModel`` of a small configuration with a locally built
byte-level tokenizer, trained contrastively on captioned instance crops, and its quality figure
(zero-shot accuracy of instance crops against "a photo of a {class}"; chance 20 %)."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..data.toyscenes import CLASSES, Scene, single_object
from .common import Optimiser

CLIP_SIZE = 64
CAPTION_MAX = 32


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
    from transformers import CLIPModel

    from ..models.tiny import build_tokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CLIPModel(_clip_config()).train()
    tok = build_tokenizer(CAPTION_MAX)
    opt = Optimiser(model.parameters(), lr, steps, "clip", log)
    for _ in range(steps):
        loss = caption_loss(torch, model, tok, *caption_batch(rng, pool, batch))
        opt.step(loss, loss.item())
    return model.eval(), tok, opt.losses


def caption_batch(rng: np.random.Generator, pool: list[Scene], batch: int) -> tuple[np.ndarray, list[str]]:
    """``batch`` captioned instance crops (30 % from fresh single-object images): (B, S, S, 3) uint8, captions."""
    crops, texts = [], []
    while len(crops) < batch:
        sc = single_object(rng, 128) if rng.random() < 0.3 else pool[int(rng.integers(0, len(pool)))]
        if len(sc.instances) == 0:
            continue
        k = int(rng.integers(0, len(sc.instances)))
        crops.append(crop(rng, sc.image, sc.instances[k]))
        texts.append(caption(rng, int(sc.classes[k]), sc.colours[k]))
    return np.stack(crops), texts


def caption_loss(torch, model, tok, crops: np.ndarray, texts: list[str]):
    """Symmetric contrastive loss with soft targets: every pair with the same caption is a positive."""
    import torch.nn.functional as F

    ids = tok(texts, padding=True, return_tensors="pt")
    out = model(**ids, pixel_values=_clip_pixels(torch, crops))
    same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(out.logits_per_image, target) + F.cross_entropy(out.logits_per_text, target))


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


def crop_targets(semantic: np.ndarray, crops_per_side: int, grid: int) -> np.ndarray:
    """Per crop of FMbSeg's crop grid, the majority class of each of its ``grid`` × ``grid``
    patches: (H, W) class map → (G², grid²) int64 (0 = background)."""
    from PIL import Image

    side = crops_per_side * grid * 4  # 4 samples per patch side
    small = np.asarray(Image.fromarray(semantic).resize((side, side), Image.NEAREST))
    g, k = crops_per_side * grid, 4
    cells = small.reshape(g, k, g, k).transpose(0, 2, 1, 3).reshape(g, g, k * k)
    votes = np.stack([(cells == c).sum(-1) for c in range(len(CLASSES) + 1)], -1).argmax(-1)  # (g, g)
    return votes.reshape(crops_per_side, grid, crops_per_side, grid).transpose(0, 2, 1, 3).reshape(
        crops_per_side ** 2, grid * grid)


def finetune_dense(model, tokenizer, pool: list[Scene], steps: int, batch: int, lr: float, seed: int,
                   log: Callable[[str], None] = print, crops_per_side: int = 4,
                   background: str = "a photo of the background"):
    """Teach the toy CLIP's patch tokens what they show, as real CLIPs' value-path patch features
    do (FMbSeg's appendix): each scene oversampled and cut as FMbSeg's Stage 1 cuts it, each
    patch's value-path feature classified against the prompts (``background`` + "a photo of a
    {c}") by a class-balanced cross-entropy, plus ``train_clip``'s caption loss on instance crops so
    that the crop classifier stays (``clip_quality`` measures it). The scene classes are the toy CLIP's training data (its pool),
    never the held-out scenes.

    Returns:
        (the model, list of per-step dense losses).
    """
    import torch
    import torch.nn.functional as F

    from ..models.clip import dense_projected, projected
    from ..methods.fmbseg import crop_grid

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.train()
    opt = Optimiser(model.parameters(), lr, steps, "clip dense", log)
    prompts = tokenizer([background, *[f"a photo of a {c}" for c in CLASSES]], padding=True, return_tensors="pt")
    grid = CLIP_SIZE // model.config.vision_config.patch_size
    for _ in range(steps):
        crops, targets = [], []
        for i in rng.integers(0, len(pool), batch):
            sc = pool[int(i)]
            x = _clip_pixels(torch, sc.image[None])[0]
            pick = rng.choice(crops_per_side ** 2, 4, replace=False)  # 4 of the 16 crops per scene
            crops.append(crop_grid(x, crops_per_side, CLIP_SIZE)[pick])
            targets.append(crop_targets(sc.semantic, crops_per_side, grid)[pick])
        y = torch.as_tensor(np.concatenate(targets).reshape(-1))
        patches, _ = dense_projected(model, torch.cat(crops), "value")
        text = F.normalize(projected(model.get_text_features(**prompts)), dim=-1)
        logits = F.normalize(patches.reshape(-1, patches.shape[-1]), dim=-1) @ text.T * model.logit_scale.exp()
        weight = 1.0 / torch.bincount(y, minlength=len(CLASSES) + 1).clamp(min=1).float()
        dense = F.cross_entropy(logits, y, weight=weight / weight.sum())
        loss = dense + caption_loss(torch, model, tokenizer, *caption_batch(rng, pool, 32))
        opt.step(loss, dense.item())  # the curve follows the dense objective
    return model.eval(), opt.losses
