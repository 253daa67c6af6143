"""The toy DINOv2: a transformers ``Dinov2Model`` of a small configuration, distilled without class
labels from the other two toy models, and its quality figure (a linear probe classifying 8×8
patches into background + 5 classes).

Two targets per patch, each through its own linear head (both heads are dropped afterwards):

- the toy SAM image encoder's feature at that patch (its grid is the same 16×16): where objects
  and their edges are;
- for a patch mostly covered by one object, the toy CLIP's image embedding of that object's
  cut-out (the crop the CLIP was trained on): what the object looks like to CLIP.

The cut-outs come from the scenes' instance masks (the toy SAM reproduces them at ~0.75 IoU from
one point); no class label or caption is read. SAM-only distillation (the first toy DINOv2) left a
balanced probe at 0.31: SAM's features say *where* an object is, not *what* it is, and the real
DINOv2's self-supervised features carry both.

**Blind to colour.** Object colour is drawn independently of class, and the class signal in the
cut-out embeddings is small next to their colour spread (the mean cosine between a circle's and a
square's cut-out is 0.51, against 0.59 between two circles and 0.49 between two squares), so a
plain cosine regression spends its error budget on colour. As the real DINO's colour jitter makes
its features colour-invariant, both targets are averaged over the six orders of the image's RGB
channels (``RECOLOURINGS``; ``teacher_targets``) and the student sees every image in a random one of
them, so colour cannot predict its targets: instance-level, a balanced linear probe on the cut-out
embeddings goes 0.80 → 0.83 with the averaging, and same-class / other-class cosines 0.52 / 0.16 →
0.74 / 0.25.

Balanced probe on the held-out scenes (``usam-ray toy check``; ``bench/toy_dino_probe.py``; every
run from the shipped SAM and dense-fine-tuned CLIP, 4 layers × 96, batch 24, lr 2e-3; the
distillation takes 0.16 s a step on this 2-core CPU):

- plain targets (the model shipped before): 0.46 at 800 steps, 0.55 at 1600, 0.56–0.58 at 3200;
- colour-blind: 0.46 at 800, 0.597 at 3200, **0.600 at 6400: shipped** (``TrainSettings.dino_steps``);
- colour-blind with inversions too (12 recolourings, DINO's solarisation): 0.591 at 3200.

At 6400 steps the recalls are background 0.95, circle 0.64, **square 0.16**, triangle 0.40, star
0.64, ring 0.82, against 0.86 balanced for the same probe on its colour-blind CLIP target itself
(0.82 for the plain one): squares still read as circles. What did not help (800-step runs unless
said): a 6-layer model with a 4× MLP (0.57 at 3200), the SAM term at 0.3 weight (0.54 at 3200), lr
4e-3 (0.44), whitened CLIP targets (0.37), the toy CLIP's embeddings of the objects' silhouettes as
a third target (0.34) or instead of the cut-outs (0.36), zoomed-in crops of the scenes for half of
each batch (0.37), a cross-entropy onto 64 k-means prototypes of the cut-out embeddings instead of
the cosine (0.44); nor, as a diagnostic with the class labels the shipped model never sees, a
supervised patch classifier of the same architecture at 800 steps (0.40; 8 heads 0.40, 8 layers
0.41, 4-pixel patches 0.35 at 400 steps): this small ViT learns shape slowly whatever it is taught,
and more steps are what moved it.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Sequence

import numpy as np

from ..data.toyscenes import CLASSES, Scene
from .common import Optimiser

# The colour changes the distillation is made blind to: the six orders of the RGB channels (a hue
# change; an order with inversion, 255 − value, is a Recolouring too, but the 12 with inversions
# measured no better than these six: module docstring).
Recolouring = tuple[tuple[int, int, int], bool]
RECOLOURINGS: tuple[Recolouring, ...] = tuple((order, False) for order in itertools.permutations(range(3)))
IDENTITY: tuple[Recolouring, ...] = (((0, 1, 2), False),)


def recolour(images: np.ndarray, recolouring: Recolouring) -> np.ndarray:
    """(..., 3) uint8 images with their channels reordered, then inverted if asked."""
    order, inverted = recolouring
    out = images[..., list(order)]
    return np.ascontiguousarray(255 - out if inverted else out)


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


def patch_instances(sc: Scene, patch: int = 8, cover: float = 0.5) -> np.ndarray:
    """(H/p · W/p,) index of the instance covering at least ``cover`` of each patch, −1 where none."""
    h, w = sc.semantic.shape
    ids = np.full((h, w), -1, np.int64)
    for k, m in enumerate(sc.instances):
        ids[m] = k
    blocks = ids.reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    out = np.full(len(blocks), -1, np.int64)
    for k in range(len(sc.instances)):
        out[(blocks == k).mean(1) >= cover] = k
    return out


def _cutout_embeddings(torch, clip, scenes: list[Scene]):
    """Unit CLIP image embeddings of every instance cut-out of ``scenes``, concatenated in order."""
    from ..models.clip import projected
    from .toy_clip import _clip_pixels, crop

    crops = [crop(None, sc.image, m) for sc in scenes for m in sc.instances]
    if not crops:
        return torch.zeros(0, clip.config.projection_dim)
    v = projected(clip.get_image_features(pixel_values=_clip_pixels(torch, np.stack(crops))))
    return v / v.norm(dim=-1, keepdim=True)


def teacher_targets(pool: list[Scene], teacher_sam, teacher_clip, chunk: int = 50,
                    recolourings: Sequence[Recolouring] = RECOLOURINGS):
    """The two distillation targets of every scene of ``pool``, computed once (the teachers are
    frozen), each the mean over the scene's ``recolourings`` (the six channel orders by default:
    the targets then do not change when a scene's channels are permuted; ``IDENTITY`` gives the
    teachers' plain outputs).

    Returns:
        (SAM features (len(pool), 256, C) float32, the mean of the unit feature vectors over the
        recolourings; each scene's cut-out embeddings (instances, E), unit mean of the
        recolourings' unit embeddings; each scene's ``patch_instances`` (256,)).
    """
    import torch
    import torch.nn.functional as F

    sam_features, cutouts = [], []
    with torch.no_grad():
        for i in range(0, len(pool), chunk):
            part = pool[i:i + chunk]
            images = np.stack([sc.image for sc in part])
            sam_sum, clip_sum = 0, 0
            for rc in recolourings:
                x = teacher_sam.preprocess(torch.as_tensor(recolour(images, rc)).permute(0, 3, 1, 2).float())
                sam_sum = sam_sum + F.normalize(teacher_sam.image_encoder(x).flatten(2).transpose(1, 2), dim=-1)
                clip_sum = clip_sum + _cutout_embeddings(
                    torch, teacher_clip, [dataclasses.replace(sc, image=recolour(sc.image, rc)) for sc in part])
            sam_features.append(sam_sum / len(recolourings))
            cutouts.extend(torch.split(F.normalize(clip_sum, dim=-1), [len(sc.instances) for sc in part]))
    return torch.cat(sam_features), cutouts, [patch_instances(sc) for sc in pool]


def train_dino(pool: list[Scene], teacher_sam, teacher_clip, steps: int, batch: int, lr: float, seed: int,
               log: Callable[[str], None] = print, clip_weight: float = 3.0):
    """Distil the toy SAM's 16×16 feature map (every patch) and the toy CLIP's object cut-out
    embeddings (patches an object covers) into DINOv2 patch tokens: cosine losses through two
    linear heads that are dropped afterwards; the CLIP term weighs ``clip_weight``. The targets are
    computed once for the pool (``teacher_targets``; the teachers are frozen). See the module docstring.

    Returns:
        (Dinov2Model, list of per-step losses).
    """
    import torch
    import torch.nn.functional as F
    from transformers import Dinov2Model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sam_features, cutouts, owners = teacher_targets(pool, teacher_sam, teacher_clip)
    model = Dinov2Model(_dino_config()).train()
    width = model.config.hidden_size
    sam_head = torch.nn.Linear(width, sam_features.shape[-1])
    clip_head = torch.nn.Linear(width, int(teacher_clip.config.projection_dim))
    opt = Optimiser(list(model.parameters()) + list(sam_head.parameters()) + list(clip_head.parameters()), lr,
                    steps, "dino", log)
    for _ in range(steps):
        idx = rng.integers(0, len(pool), batch)
        offsets = np.cumsum([0] + [len(cutouts[i]) for i in idx])
        owner = np.concatenate([np.where(owners[i] >= 0, owners[i] + offsets[b], -1) for b, i in enumerate(idx)])
        # each image in a random recolouring: its targets are the same for all of them
        images = np.stack([recolour(pool[i].image, RECOLOURINGS[rng.integers(0, len(RECOLOURINGS))]) for i in idx])
        tokens = model(pixel_values=_dino_pixels(torch, images))
        tokens = tokens.last_hidden_state[:, 1:].reshape(-1, width)
        sam_target = sam_features[torch.as_tensor(idx)].reshape(len(tokens), -1)
        loss = 1 - F.cosine_similarity(sam_head(tokens), sam_target, dim=-1).mean()
        covered = torch.as_tensor(owner >= 0)
        if covered.any():
            target = torch.cat([cutouts[i] for i in idx])[torch.as_tensor(owner[owner >= 0])]
            loss = loss + clip_weight * (1 - F.cosine_similarity(clip_head(tokens[covered]), target, dim=-1).mean())
        opt.step(loss, loss.item())
    return model.eval(), opt.losses


def patch_labels(semantic: np.ndarray, patch: int = 8) -> np.ndarray:
    """(H, W) class map → (H/p · W/p,) majority class per patch."""
    h, w = semantic.shape
    blocks = semantic.reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    return np.array([np.bincount(b, minlength=len(CLASSES) + 1).argmax() for b in blocks])


def dino_quality(model, train: list[Scene], test: list[Scene]) -> tuple[float, float]:
    """Class-balanced linear-probe patch accuracy (background + 5 classes; ``balanced_probe``),
    fitted on ``train`` scenes' patch features, scored on ``test`` scenes' patches.

    Returns:
        (accuracy, balanced accuracy = mean of the 6 per-class recalls; the informative figure).
    """

    def features(scenes):
        feats = [dino_patch_features(model, np.stack([s.image for s in scenes[i:i + 64]])).numpy()
                 for i in range(0, len(scenes), 64)]
        return np.concatenate(feats).reshape(-1, feats[0].shape[-1]), np.concatenate([patch_labels(s.semantic) for s in scenes])

    accuracy, recalls = balanced_probe(*features(train), *features(test))
    return accuracy, float(np.mean(recalls))


def balanced_probe(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> tuple[float, list[float]]:
    """A class-balanced linear probe: least squares (+ bias, small ridge) on one-hot targets, each
    patch weighted by 1 / its class's count (so background, ~88 % of the patches, does not drown
    the classes), fitted on (x (P, D), y (P,)), scored on (xt, yt).

    Returns:
        (accuracy, the recall of each class present in ``yt``, background first).
    """
    k = len(CLASSES) + 1
    x, xt = np.hstack([x, np.ones((len(x), 1))]), np.hstack([xt, np.ones((len(xt), 1))])
    onehot = np.eye(k)[y]
    weights = 1.0 / np.bincount(y, minlength=k)[y]  # (patches,)
    xw = x * weights[:, None]
    w = np.linalg.solve(x.T @ xw + 1e-2 * np.eye(x.shape[1]) * weights.mean(), xw.T @ onehot)
    pred = (xt @ w).argmax(1)
    return float((pred == yt).mean()), [float((pred[yt == c] == c).mean()) for c in range(k) if (yt == c).any()]
