"""UO-SAM: training-free refinement of coarse semantic masks with SAM (local and global optimizers).

Per image, SAM's encoder runs once; every class region of the coarse map is refined from that one
embedding, all classes in one batched decoder call per step.

- **Local region optimizer (LRO)**, per class c present in the coarse map M: the image embedding
  F (C, h, w); the local features L = F at the grid cells of M_c; the location confidence map
  S = mean_{l ∈ L} cos(F, l) = F̂ · mean(L̂). The positive point is the pixel of M_c at the cell of
  M_c with the highest S, the negative the pixel outside M_c at the cell of the image with the
  lowest S. The connected component of M_c holding the positive point gives the box B. Step 1:
  decoder(points, B) → 3 masks, the best predicted IoU kept. Step 2: step 1's logits as the dense
  prompt, its box B′ and the same points → SAM's single-mask output, the refined mask.
  The refined mask replaces that component: its pixels take class c, the component's pixels it
  leaves become background. Other components of M_c (a second object of the class) keep their
  coarse pixels; where two classes' refined masks overlap, the higher predicted IoU wins.
- **Global region optimizer (GRO)**: SAM's automatic masks (the grid of ``SamConfig``, filtered as
  ``LabelSettings`` says) each take the majority class of the LRO map under them when that class
  holds at least ``min_vote`` of the mask (``fmbseg.refine_with_masks``). With
  ``background_votes`` False a mask whose majority is background is left alone, so background
  never erases an object the LRO kept (the reference code lets it; ``bench/uosam.py`` measures both).

Pure torch and numpy on a ``SamMaskEmbedder`` (no Ray).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import LabelSettings
from ..types import MaskSet
from .fmbseg import automatic_masks, refine_with_masks
from .sam_embed import SamMaskEmbedder


@dataclass(frozen=True)
class RegionPrompt:
    """The prompts LRO derives for one class region (original pixel coordinates).

    Attributes:
        class_id (int): the coarse class (≥ 1).
        positive (tuple[int, int]): (x, y) inside the class region.
        negative (tuple[int, int]): (x, y) outside it.
        component (np.ndarray): (H, W) bool, the connected component of the region holding
            ``positive``.
        box (tuple[int, int, int, int]): (x0, y0, x1, y1) of ``component``, inclusive pixels.
    """

    class_id: int
    positive: tuple[int, int]
    negative: tuple[int, int]
    component: np.ndarray
    box: tuple[int, int, int, int]


def grid_coverage(region: np.ndarray, input_size: tuple[int, int], image_size: int, grid: int) -> np.ndarray:
    """The share of each embedding cell that ``region`` covers, in SAM's padded input frame.

    Args:
        region (np.ndarray): (H, W) bool at the original size.
        input_size (tuple): (h, w) of the resized image inside SAM's (image_size, image_size) pad.
        image_size (int): SAM's input side S.
        grid (int): the embedding side (S / 16).

    Returns:
        (grid, grid) float32 in [0, 1]; cells of the padding are 0.
    """
    import cv2

    h, w = input_size
    resized = cv2.resize(region.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    padded = np.zeros((image_size, image_size), np.float32)
    padded[:h, :w] = resized
    cell = image_size // grid
    return padded[: grid * cell, : grid * cell].reshape(grid, cell, grid, cell).mean(axis=(1, 3))


def confidence_map(features: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Location confidence S = mean over the region's cells l of cos(F, l).

    Args:
        features (np.ndarray): (C, g, g) image embedding.
        inside (np.ndarray): (g, g) bool, the region's cells (at least one).

    Returns:
        (g, g) float32 in [-1, 1].
    """
    f = features.reshape(features.shape[0], -1).astype(np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=0, keepdims=True), 1e-6)
    local = f[:, inside.reshape(-1)]
    return (local.mean(axis=1) @ f).reshape(features.shape[1:])


def region_prompts(coarse: np.ndarray, features: np.ndarray, input_size: tuple[int, int], image_size: int,
                   classes: Optional[list[int]] = None, every_component: bool = False,
                   min_component: int = 16) -> list[RegionPrompt]:
    """LRO's points and boxes for every class region of ``coarse``.

    Args:
        coarse (np.ndarray): (H, W) uint8 class ids, 0 = background (not refined), 255 = ignore.
        features (np.ndarray): (C, g, g) SAM image embedding of the image.
        input_size (tuple): (h, w) of the resized image inside SAM's pad.
        image_size (int): SAM's input side S.
        classes (list[int] | None): the classes to refine (default: every id in 1..254 present).
        every_component (bool): False (the paper): one prompt per class, for the component holding
            the positive point; True: one per connected component of at least ``min_component``
            pixels (each with its own positive point; S from the whole class region).

    Returns:
        RegionPrompts, per class in id order.
    """
    import cv2

    height, width = coarse.shape
    grid = features.shape[-1]
    cell = image_size / grid
    scale_y, scale_x = height / input_size[0], width / input_size[1]  # original pixels per input pixel
    valid = grid_coverage(np.ones_like(coarse, bool), input_size, image_size, grid) > 0.5
    ids = classes if classes is not None else [int(c) for c in np.unique(coarse) if 0 < c < 255]
    out = []
    for c in ids:
        region = coarse == c
        if not region.any():
            continue
        s = confidence_map(features, _cells(region, input_size, image_size, grid))
        outside = valid & (grid_coverage(region, input_size, image_size, grid) < 0.5)
        neg_cell = np.unravel_index(np.where(outside if outside.any() else valid, s, np.inf).argmin(), s.shape)
        negative = _nearest(~region, _centre(neg_cell, cell, scale_x, scale_y))
        n, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
        if every_component:
            parts = [labels == k for k in range(1, n) if (labels == k).sum() >= min_component] or [region]
        else:
            parts = [region]
        for part in parts:
            inside = _cells(part, input_size, image_size, grid)
            pos_cell = np.unravel_index(np.where(inside, s, -np.inf).argmax(), s.shape)
            positive = _nearest(part, _centre(pos_cell, cell, scale_x, scale_y))
            component = labels == labels[positive[1], positive[0]]
            ys, xs = np.nonzero(component)
            out.append(RegionPrompt(c, positive, negative if negative is not None else positive, component,
                                    (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))))
    return out


def _cells(region: np.ndarray, input_size: tuple[int, int], image_size: int, grid: int) -> np.ndarray:
    """The embedding cells a region covers at least half of (its best-covered cell when it is smaller)."""
    cover = grid_coverage(region, input_size, image_size, grid)
    inside = cover >= 0.5
    return inside if inside.any() else cover >= cover.max()


def _centre(grid_cell, cell: float, scale_x: float, scale_y: float) -> tuple[float, float]:
    """Centre of an embedding cell, in original pixel coordinates (x, y)."""
    i, j = grid_cell
    return (j + 0.5) * cell * scale_x, (i + 0.5) * cell * scale_y


def _nearest(mask: np.ndarray, point: tuple[float, float]) -> Optional[tuple[int, int]]:
    """The pixel (x, y) of ``mask`` nearest ``point`` (None if ``mask`` is empty)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    k = int(np.argmin((xs - point[0]) ** 2 + (ys - point[1]) ** 2))
    return int(xs[k]), int(ys[k])


@dataclass
class Refinement:
    """What UO-SAM made of one image.

    Attributes:
        lro (np.ndarray): (H, W) uint8, the map after the local region optimizer.
        semantic (np.ndarray): (H, W) uint8, after GRO too (``lro`` when GRO is off).
        prompts (list[RegionPrompt]): LRO's prompts.
        scores (dict[int, float]): class id → the refined mask's predicted IoU.
    """

    lro: np.ndarray
    semantic: np.ndarray
    prompts: list[RegionPrompt]
    scores: dict[int, float]


class UoSam:
    """UO-SAM on a loaded SAM.

    Args:
        embedder (SamMaskEmbedder): the SAM (its settings give GRO's automatic-mask grid).
        settings (LabelSettings): ``min_iou_pred``, ``min_area``, ``nms_iou`` filter GRO's masks.
        use_global (bool): run GRO after LRO.
        min_vote (float): a GRO mask is relabelled when its majority class holds this share of it.
        background_votes (bool): whether a GRO mask won by background is applied (paints background).
        every_component (bool), min_component (int): LRO's regions (``region_prompts``).
    """

    def __init__(self, embedder: SamMaskEmbedder, settings: LabelSettings, use_global: bool = True,
                 min_vote: float = 0.5, background_votes: bool = False, every_component: bool = False,
                 min_component: int = 16) -> None:
        self.embedder = embedder
        self.every_component = every_component
        self.min_component = min_component
        self.settings = settings
        self.use_global = use_global
        self.min_vote = min_vote
        self.background_votes = background_votes

    def refine_batch(self, padded: np.ndarray, input_sizes: list[tuple[int, int]], coarse: list[np.ndarray]) -> list[Refinement]:
        """Refine a batch: the encoder runs once for it.

        Args:
            padded (np.ndarray): (B, S, S, 3) uint8 images from ``prepare_image``.
            input_sizes (list): (h, w) of each resized image inside its pad.
            coarse (list[np.ndarray]): B (H, W) uint8 coarse maps at the images' original sizes.
        """
        return self.refine_many(padded, input_sizes, [list(coarse)])[0]  # type: ignore[return-value]

    def refine_many(self, padded: np.ndarray, input_sizes: list[tuple[int, int]],
                    coarse_sets: list[list[Optional[np.ndarray]]]) -> list[list[Optional[Refinement]]]:
        """Refine several coarse inputs of the same batch of images (label sets from several
        segmenters): the encoder runs once for the batch and GRO's automatic masks once per image,
        whatever the number of inputs.

        Args:
            padded (np.ndarray), input_sizes (list): as ``refine_batch``.
            coarse_sets (list[list]): per input, B (H, W) uint8 coarse maps, or None where that
                input has nothing to refine for that image.

        Returns:
            per input, B ``Refinement`` (None where its map was None).
        """
        torch = self.embedder.torch
        out: list[list[Optional[Refinement]]] = [[None] * len(input_sizes) for _ in coarse_sets]
        with torch.inference_mode():
            features = self.embedder.encode(padded, input_sizes)
            for i, size in enumerate(input_sizes):
                auto: Optional[MaskSet] = None
                for j, maps in enumerate(coarse_sets):
                    if maps[i] is None:
                        continue
                    if self.use_global and auto is None:
                        auto = automatic_masks(self.embedder.embed_prepared(
                            padded[i : i + 1], [size], [maps[i].shape], features=features[i : i + 1])[0], self.settings)
                    out[j][i] = self.refine_one(features[i : i + 1], padded[i : i + 1], size, maps[i], auto)
        return out

    def refine_one(self, features, padded: np.ndarray, input_size: tuple[int, int], coarse: np.ndarray,
                   auto: Optional[MaskSet] = None) -> Refinement:
        """LRO (and GRO) of one image from its embedding ((1, C, g, g) tensor); ``auto``: GRO's
        automatic masks (``automatic_masks`` of this image at the coarse map's size) when already made."""
        coarse = np.where(coarse == 255, 0, coarse).astype(np.uint8)
        prompts = region_prompts(coarse, features[0].float().cpu().numpy(), input_size, self.embedder.image_size,
                                 every_component=self.every_component, min_component=self.min_component)
        lro, scores = self._local(features, input_size, coarse, prompts)
        semantic = lro
        if self.use_global:
            if auto is None:
                auto = automatic_masks(self.embedder.embed_prepared(padded, [input_size], [coarse.shape],
                                                                    features=features)[0], self.settings)
            semantic = self.global_vote(lro, auto)
        return Refinement(lro, semantic, prompts, scores)

    def global_vote(self, lro: np.ndarray, auto: MaskSet) -> np.ndarray:
        """GRO: relabel each automatic mask by the majority class of ``lro`` under it."""
        if self.background_votes:
            return refine_with_masks(lro, auto, self.min_vote)
        voted = refine_with_masks(lro, auto, self.min_vote)
        # where a background-won mask painted background over an object, keep the object
        return np.where((voted == 0) & (lro != 0), lro, voted).astype(np.uint8)

    def _local(self, features, input_size, coarse: np.ndarray, prompts: list[RegionPrompt]) -> tuple[np.ndarray, dict[int, float]]:
        """LRO's two decoder steps for all class regions at once, merged into the coarse map."""
        torch = self.embedder.torch
        out = coarse.copy()
        if not prompts:
            return out, {}
        height, width = coarse.shape
        sx, sy = input_size[1] / width, input_size[0] / height  # ResizeLongestSide.apply_coords
        device = self.embedder.device
        coords = torch.tensor([[p.positive, p.negative] for p in prompts], dtype=torch.float32, device=device)
        coords = coords * torch.tensor([sx, sy], device=device)
        labels = torch.tensor([[1, 0]] * len(prompts), dtype=torch.int, device=device)
        boxes = torch.tensor([p.box for p in prompts], dtype=torch.float32, device=device)
        boxes = (boxes + torch.tensor([0, 0, 1, 1], device=device)) * torch.tensor([sx, sy, sx, sy], device=device)
        low, iou, _ = self.embedder.decode_prompts(features, coords, labels, boxes=boxes)
        best = iou.argmax(dim=1)
        rows = torch.arange(len(prompts), device=device)
        step1 = low[rows, best][:, None]  # (Q, 1, 4g, 4g)
        first = self.embedder.full_size_masks(step1, input_size, (height, width))
        boxes2 = torch.stack([_box_or(first[q], boxes[q] / torch.tensor([sx, sy, sx, sy], device=device))
                              for q in range(len(prompts))]) * torch.tensor([sx, sy, sx, sy], device=device)
        low2, iou2, _ = self.embedder.decode_prompts(features, coords, labels, boxes=boxes2, mask_inputs=step1,
                                                     multimask=False)
        refined = self.embedder.full_size_masks(low2, input_size, (height, width)).cpu().numpy()
        scores = iou2[:, 0].float().cpu().numpy()
        for q in np.argsort(scores, kind="stable"):  # the highest predicted IoU is applied last and wins
            p, mask = prompts[q], refined[q]
            if not mask.any():  # SAM found nothing: keep the coarse region
                continue
            out[p.component & ~mask & (out == p.class_id)] = 0
            out[mask] = p.class_id
        return out, {p.class_id: float(s) for p, s in zip(prompts, scores)}


def _box_or(mask, fallback):
    """The (x0, y0, x1, y1) box of a (H, W) bool tensor in original pixels (x1, y1 exclusive), or
    ``fallback`` when the mask is empty."""
    import torch

    ys = torch.nonzero(mask.any(dim=1)).flatten()
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    if not len(xs):
        return fallback
    return torch.stack([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]).float()
