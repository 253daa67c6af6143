"""FMbSeg per image: Stage 1 pseudo labels from CLIP + SAM, DINOv2 patch features for Stage 2,
and Stage 2's dense labelling (base and SAM-refined). Pure torch/numpy, no Ray.

Frames: the image a method sees is the visible part of SAM's padded input (``padded[:h, :w]``,
the image resized so its long side is SAM's input side); CLIP sees it squashed to a square of
``crops_per_side`` × its input side, cut into crops (row-major); DINOv2 sees it squashed to its
input side (g × g patches). A map cell's centre in normalised coordinates (x, y) ∈ [0, 1]² is
the same point in every frame, which is how CLIP cells become SAM point prompts and how pseudo
masks become DINOv2 patch labels.

Class ids here are 0-based into the run's classes; label maps use 0 = background, c + 1 = class c.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..config import FmbsegSettings, LabelSettings
from ..masks import mask_nms, masks_to_boxes, masks_to_rles, rle_areas, rles_to_masks
from ..types import MaskSet

STAGE_11, STAGE_12 = 11, 12


def crop_grid(image, crops_per_side: int, size: int):
    """Oversample an image to (G·size)² and cut it into G² crops, row-major.

    Args:
        image (torch.Tensor): (3, h, w) float.
        crops_per_side (int): G.
        size (int): crop side (CLIP's input side).

    Returns:
        (G², 3, size, size) tensor; crop k covers rows k // G and columns k % G of the grid.
    """
    import torch.nn.functional as F

    g = crops_per_side
    big = F.interpolate(image[None], (g * size, g * size), mode="bilinear", align_corners=False, antialias=True)[0]
    crops = big.reshape(3, g, size, g, size).permute(1, 3, 0, 2, 4)  # (G, G, 3, size, size)
    return crops.reshape(g * g, 3, size, size)


def stitch(crop_maps, crops_per_side: int):
    """Per-crop (G², g, g, E) feature maps → one (G·g, G·g, E) map (the inverse of ``crop_grid``)."""
    n, g, _, e = crop_maps.shape
    k = crops_per_side
    if n != k * k:
        raise ValueError(f"stitch: {n} crop maps for a {k}x{k} grid")
    return crop_maps.reshape(k, k, g, g, e).permute(0, 2, 1, 3, 4).reshape(k * g, k * g, e)


def present_classes(crop_cls, text, threshold: int) -> list[int]:
    """Classes that win more than ``threshold`` crops: argmax of each crop's class embedding over
    the class text features. (G², E) × (C, E) → sorted 0-based class ids."""
    wins = (crop_cls @ text.T).argmax(1)
    counts = np.bincount(wins.cpu().numpy(), minlength=text.shape[0])
    return [int(c) for c in np.flatnonzero(counts > threshold)]


def top_patch_points(clip_map, text_c, k: int) -> np.ndarray:
    """Normalised (x, y) centres of the ``k`` cells of a (M, M, E) map most similar to ``text_c`` (E,).

    Returns:
        (k, 2) float32 in [0, 1], most similar first.
    """
    m = clip_map.shape[0]
    sim = (clip_map.reshape(-1, clip_map.shape[-1]) @ text_c).cpu().numpy()
    best = np.argsort(-sim, kind="stable")[:k]
    rows, cols = best // m, best % m
    return np.stack([(cols + 0.5) / m, (rows + 0.5) / m], axis=1).astype(np.float32)


def mean_feature_in_masks(clip_map, masks):
    """Mean (then unit) map feature inside each mask: (M, M, E) map, (N, H, W) bool masks → (N, E).

    A mask is averaged down to the map's grid (the share of each cell it covers) and weights the
    cells; an empty mask gives a zero vector."""
    import torch
    import torch.nn.functional as F

    m = clip_map.shape[0]
    w = F.interpolate(torch.as_tensor(masks, device=clip_map.device)[:, None].float(), (m, m), mode="area")[:, 0]
    feats = w.reshape(len(masks), -1) @ clip_map.reshape(m * m, -1)
    return F.normalize(feats / w.reshape(len(masks), -1).sum(1, keepdim=True).clamp(min=1e-6), dim=-1)


@dataclass
class ImageInput:
    """One image as FMbSeg's models see it.

    Attributes:
        visible (np.ndarray): (h, w, 3) uint8, the image resized for SAM (no padding).
        original_size (tuple[int, int]): (H, W) of the source image (masks are returned at this size).
        labels (list[str] | None): image-level labels when the source gives them (no presence test then).
    """

    visible: np.ndarray
    original_size: tuple[int, int]
    labels: Optional[list[str]] = None


class FmbsegModels:
    """CLIP, SAM and DINOv2 loaded once, and the class vocabulary's text features.

    Args:
        clip (ClipBundle), clip_spec (ModelSpec): CLIP and its preprocessing (input side, mean, std).
        embedder (SamMaskEmbedder): SAM set up for inference (its settings give the 1.2 grid).
        dino (DinoBundle | None), dino_spec (ModelSpec | None): DINOv2 (None: no features).
        classes (list[str]): class names.
        settings (FmbsegSettings): Stage 1 settings.
        device (str): torch device for CLIP and DINOv2.
    """

    def __init__(self, clip, clip_spec, embedder, dino, dino_spec, classes: Sequence[str],
                 settings: FmbsegSettings, device: str = "cpu") -> None:
        import torch

        from ..models.clip import text_features

        self.torch = torch
        self.device = torch.device(device)
        self.clip, self.clip_spec, self.embedder = clip, clip_spec, embedder
        self.dino, self.dino_spec = dino, dino_spec
        self.clip.model.to(self.device)
        if dino is not None:
            dino.model.to(self.device)
        self.classes = list(classes)
        self.settings = settings
        prompts = [settings.template.format(c=c) for c in self.classes]
        # (1 + C, E): background first, then the classes, encoded once
        self.prototypes = text_features(clip, [settings.background_prompt, *prompts]).to(self.device)
        self.text = self.prototypes[1:]  # (C, E)

    def clip_map(self, visible: np.ndarray):
        """Dense CLIP features of one image: the stitched (M, M, E) unit map and the crops' (G², E)
        class embeddings (M = crops_per_side × patches per crop side)."""
        from ..models.clip import dense_features

        s = self.settings
        crops = crop_grid(_normalise(self.torch, visible, self.clip_spec.mean, self.clip_spec.std, self.device),
                          s.crops_per_side,
                          self.clip_spec.input_size)
        patches, cls = dense_features(self.clip, crops, s.clip_variant)
        return stitch(patches, s.crops_per_side), cls

    def dino_features(self, visibles: Sequence[np.ndarray]):
        """DINOv2 patch tokens of images squashed to its input side: (B, g·g, D) float32 (CLS dropped)."""
        return dino_features(self.dino, self.dino_spec, visibles, self.device)


def _normalise(torch, visible: np.ndarray, mean, std, device):
    """(h, w, 3) uint8 → (3, h, w) float normalised by ``mean``/``std`` on ``device``."""
    x = torch.as_tensor(visible, device=device).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(mean, device=device)[:, None, None]) / torch.tensor(std, device=device)[:, None, None]


def dino_features(dino, dino_spec, visibles: Sequence[np.ndarray], device="cpu"):
    """DINOv2 patch tokens of images squashed to its input side (as Stage 2 trains and labels).

    Args:
        dino (DinoBundle), dino_spec (ModelSpec): the model and its input side, mean and std.
        visibles (list[np.ndarray]): (h, w, 3) uint8 images (sizes may differ).

    Returns:
        (B, g·g, D) float32 tensor (CLS dropped), g = input side / patch size.
    """
    import torch
    import torch.nn.functional as F

    size = dino_spec.input_size
    x = torch.stack([
        F.interpolate(_normalise(torch, v, dino_spec.mean, dino_spec.std, device)[None], (size, size),
                      mode="bilinear", align_corners=False, antialias=True)[0] for v in visibles])
    with torch.inference_mode():
        return dino.model(pixel_values=x).last_hidden_state[:, 1:].float()


def detected_classes(models: FmbsegModels, crop_cls, labels: Optional[list[str]]) -> list[int]:
    """The image's classes: its image-level labels when given (names outside the vocabulary are
    ignored), else the crop vote (``present_classes``)."""
    if labels:
        return sorted({models.classes.index(x) for x in labels if x in models.classes})
    return present_classes(crop_cls, models.text, models.settings.presence_threshold)


def stage11(models: FmbsegModels, features, clip_map, classes: list[int], input_size: tuple[int, int],
            original_size: tuple[int, int]) -> MaskSet:
    """Stage 1.1: per detected class, its ``top_patches`` most similar CLIP cells as positive
    points of one SAM prompt; the best of SAM's 3 multimask outputs by predicted IoU.

    Returns:
        MaskSet (RLE at ``original_size``), one mask per class, ``scores`` = predicted IoU,
        ``data["points"]`` (C, k, 2) prompts in original pixels.
    """
    torch = models.torch
    h_in, w_in = input_size
    if not classes:
        return _empty({"points": np.zeros((0, models.settings.top_patches, 2), np.float32)})
    norm = np.stack([top_patch_points(clip_map, models.text[c], models.settings.top_patches) for c in classes])
    coords = torch.as_tensor(norm * np.array([w_in, h_in], np.float32))
    labels = torch.ones(coords.shape[:2], dtype=torch.int)
    with torch.inference_mode():
        low, iou, _ = models.embedder.decode_prompts(features, coords, labels)
        best = iou.argmax(1)
        rows = torch.arange(len(best))
        masks = models.embedder.full_size_masks(low[rows, best][:, None], input_size, original_size).cpu().numpy()
    points = norm * np.array([original_size[1], original_size[0]], np.float32)
    return MaskSet(masks_to_rles(masks), masks_to_boxes(masks), iou[rows, best].cpu().numpy(),
                   np.asarray(classes, np.int64), {"points": points})


def stage12(models: FmbsegModels, auto: MaskSet, clip_map, classes: list[int]) -> MaskSet:
    """Stage 1.2: SAM automatic masks (a grid's best masks, ``auto``) kept when their predicted
    IoU passes ``pred_iou_thresh`` and their area the size limits, mask-NMSed, each labelled by the
    detected class whose text is most similar to the mean CLIP feature inside it.

    Returns:
        MaskSet (RLE), ``scores`` = predicted IoU, ``data["similarity"]`` cosine to the chosen class.
    """
    s = models.settings
    height, width = auto.masks[0]["size"] if len(auto) else (0, 0)
    if not classes or not len(auto):
        return _empty({"similarity": np.zeros(0, np.float32)})
    iou = np.asarray(auto.data["iou_pred"], np.float32)
    areas = rle_areas(auto.masks) / float(height * width)
    keep = np.flatnonzero((iou >= s.pred_iou_thresh) & (areas >= s.min_area_fraction) & (areas <= s.max_area_fraction))
    keep = keep[mask_nms([auto.masks[i] for i in keep], iou[keep], s.nms_iou)] if len(keep) else keep
    if not len(keep):
        return _empty({"similarity": np.zeros(0, np.float32)})
    rles = [auto.masks[i] for i in keep]
    feats = mean_feature_in_masks(clip_map, rles_to_masks(rles, (height, width)))
    sim = (feats @ models.text[classes].T).cpu().numpy()  # (N, detected)
    choice = sim.argmax(1)
    return MaskSet(rles, auto.boxes[keep], iou[keep], np.asarray(classes, np.int64)[choice],
                   {"similarity": sim[np.arange(len(keep)), choice].astype(np.float32)})


def _empty(data: dict) -> MaskSet:
    return MaskSet([], np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), data)


def pseudo_label(models: FmbsegModels, padded: np.ndarray, images: Sequence[ImageInput],
                 input_sizes: Sequence[tuple[int, int]]) -> list[tuple[MaskSet, list[int]]]:
    """Stage 1 for a batch: SAM encodes each image once (for 1.1 and 1.2 together), CLIP once.

    Args:
        padded (np.ndarray): (B, S, S, 3) uint8 SAM inputs (``prepare_image``).
        images (list[ImageInput]): per image, its visible part, original size and labels.
        input_sizes (list[(h, w)]): the visible size inside each pad.

    Returns:
        per image: (MaskSet of its pseudo masks, 1.1 first — ``class_ids`` 0-based, ``scores`` =
        SAM's predicted IoU, ``data["stage"]`` 11 or 12 —, the detected classes).
    """
    torch = models.torch
    out = []
    with torch.inference_mode():
        features = models.embedder.encode(padded, input_sizes)
        autos = models.embedder.embed_prepared(padded, input_sizes, [im.original_size for im in images], features)
    for i, im in enumerate(images):
        clip_map, crop_cls = models.clip_map(im.visible)
        classes = detected_classes(models, crop_cls, im.labels)
        a = stage11(models, features[i:i + 1], clip_map, classes, input_sizes[i], im.original_size)
        b = stage12(models, autos[i], clip_map, classes)
        stage = np.concatenate([np.full(len(a), STAGE_11, np.int8), np.full(len(b), STAGE_12, np.int8)])
        out.append((MaskSet([*a.masks, *b.masks], np.concatenate([a.boxes, b.boxes]),
                            np.concatenate([a.scores, b.scores]), np.concatenate([a.class_ids, b.class_ids]),
                            {"stage": stage}), classes))
    return out


# ------------------------------------------------------------------------------ Stage 2 targets


def stage12_sample(image_id: str, n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of an image's ``n`` Stage 1.2 masks train Stage 2: a seeded random ``fraction`` of them
    (rounded), drawn from (seed, image id) so the choice does not depend on shard layout.

    Returns:
        (n,) bool.
    """
    import zlib

    rng = np.random.default_rng([seed, zlib.crc32(image_id.encode())])
    chosen = np.zeros(n, bool)
    chosen[rng.permutation(n)[: int(round(fraction * n))]] = True
    return chosen


def training_masks(image_id: str, stage: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Which of an image's pseudo masks Stage 2 learns from: every Stage 1.1 mask and the seeded
    ``fraction`` of its Stage 1.2 masks (``stage12_sample``). (N,) stage codes → (N,) bool."""
    keep = np.asarray(stage) == STAGE_11
    keep[~keep] = stage12_sample(image_id, int((~keep).sum()), fraction, seed)
    return keep


def pseudo_label_map(masks: MaskSet, keep: np.ndarray, height: int, width: int) -> np.ndarray:
    """The pseudo label map Stage 2 learns from: kept Stage 1.2 masks painted first (largest first),
    then Stage 1.1 masks over them (largest first); uncovered pixels are background.

    Args:
        masks (MaskSet): the image's pseudo masks with ``data["stage"]``.
        keep (np.ndarray): (N,) bool, masks used.

    Returns:
        (H, W) uint8, 0 = background, c + 1 = class c.
    """
    out = np.zeros((height, width), np.uint8)
    idx = np.flatnonzero(keep)
    if not len(idx):
        return out
    binary = rles_to_masks([masks.masks[i] for i in idx], (height, width))
    areas = binary.reshape(len(idx), -1).sum(1)
    stage = np.asarray(masks.data["stage"])[idx]
    order = np.lexsort((-areas, stage == STAGE_11))  # 1.2 before 1.1, each largest first
    for k in order:
        out[binary[k]] = int(masks.class_ids[idx[k]]) + 1
    return out


def patch_targets(label_map: np.ndarray, grid: int, classes: int) -> np.ndarray:
    """Majority label of each cell of a ``grid`` × ``grid`` split of a (H, W) label map (squashed, as
    DINOv2 sees the image). Returns (grid²,) int64 in [0, classes]."""
    from PIL import Image

    k = 8  # samples per cell side
    small = np.asarray(Image.fromarray(label_map).resize((grid * k, grid * k), Image.NEAREST))
    cells = small.reshape(grid, k, grid, k).transpose(0, 2, 1, 3).reshape(grid * grid, k * k)
    counts = np.stack([(cells == c).sum(1) for c in range(classes + 1)], axis=1)
    return counts.argmax(1).astype(np.int64)


# ------------------------------------------------------------------------------ Stage 2 inference


def dense_scores(head, features, prototypes, grid: int, height: int, width: int):
    """Stage 2 inference ("base"): per patch similarity to every prototype, bilinearly interpolated
    to pixels.

    Args:
        head (AlignmentHead): the trained module.
        features (torch.Tensor): (N, D) DINOv2 patch tokens of one image (N = grid²).
        prototypes (torch.Tensor): (K, E) unit text prototypes, background first.

    Returns:
        (K, H, W) float32 tensor of cosine similarities.
    """
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        z = head(features[None].float())[0]  # (N, E)
        sim = (z @ prototypes.T).T.reshape(1, -1, grid, grid)
        return F.interpolate(sim, (height, width), mode="bilinear", align_corners=False)[0]


def label_image(head, prototypes, features, height: int, width: int, auto: Optional[MaskSet] = None,
                settings: Optional[LabelSettings] = None, temperature: float = 0.1) -> tuple[MaskSet, np.ndarray]:
    """Stage 2 labels of one image: base (nearest prototype per pixel of the interpolated
    similarities) or, with ``auto``, refined by SAM's automatic masks (``refine_with_masks`` over
    ``automatic_masks(auto, settings)``); then one instance per connected component.

    Args:
        head (AlignmentHead), prototypes (torch.Tensor (K, E)), features (torch.Tensor (N, D)): as ``dense_scores``.
        height, width (int): the image's size (labels are returned at it).
        auto (MaskSet | None): SAM automatic masks (RLE at (height, width), ``data["iou_pred"]``).
        settings (LabelSettings | None): ``min_area`` of an instance, and the automatic masks' limits.
        temperature (float): instance scores are the mean softmax(similarity / temperature) of
            their class over their pixels.

    Returns:
        (instances MaskSet, 0-based ``class_ids``; semantic (H, W) uint8, 0 = background).
    """
    return label_image_variants(head, prototypes, features, height, width, [auto], settings, temperature)[0]


def label_image_variants(head, prototypes, features, height: int, width: int, autos: list[Optional[MaskSet]],
                         settings: Optional[LabelSettings] = None,
                         temperature: float = 0.1) -> list[tuple[MaskSet, np.ndarray]]:
    """``label_image`` once per entry of ``autos`` (None: the base labels; a MaskSet: refined by
    it) from one pass of the module and one interpolation (refined and base labels of an image
    together cost one).

    Returns:
        one (instances, semantic) per entry of ``autos``, in order.
    """
    settings = settings or LabelSettings()
    grid = int(round(features.shape[0] ** 0.5))
    sim = dense_scores(head, features, prototypes, grid, height, width)  # (K, H, W)
    base = sim.argmax(0).cpu().numpy().astype(np.uint8)
    probs = (sim / temperature).softmax(0).cpu().numpy()
    out = []
    for auto in autos:
        semantic = base if auto is None else refine_with_masks(base, automatic_masks(auto, settings))
        out.append((instances_from_map(semantic, probs, settings.min_area), semantic))
    return out


def refine_with_masks(semantic: np.ndarray, auto: MaskSet, min_vote: float = 0.5) -> np.ndarray:
    """"Refined" labels: each SAM automatic mask (largest first, so smaller ones win where they
    overlap) relabelled by the majority class of the base map under it, when that class holds at
    least ``min_vote`` of its pixels; pixels outside every such mask keep the base label.

    Args:
        semantic (np.ndarray): (H, W) uint8 base labels.
        auto (MaskSet): RLE masks at (H, W).

    Returns:
        (H, W) uint8.
    """
    out = semantic.copy()
    if not len(auto):
        return out
    binary = rles_to_masks(list(auto.masks), semantic.shape)
    for k in np.argsort(-binary.reshape(len(binary), -1).sum(1), kind="stable"):
        votes = np.bincount(semantic[binary[k]], minlength=256)
        if votes.sum() and votes.max() >= min_vote * votes.sum():
            out[binary[k]] = votes.argmax()
    return out


def instances_from_map(semantic: np.ndarray, scores: Optional[np.ndarray] = None, min_area: int = 1) -> MaskSet:
    """Instances of a semantic map: one per connected component of each class (8-connectivity).

    Args:
        semantic (np.ndarray): (H, W) uint8, 0 = background.
        scores (np.ndarray | None): (K, H, W) per-class scores (background first); an instance's
            score is the mean of its class's score over its pixels (1.0 when None).
        min_area (int): smaller components are left out.

    Returns:
        MaskSet (RLE), ``class_ids`` 0-based (label − 1), largest first.
    """
    import cv2

    masks, classes, values = [], [], []
    for c in np.unique(semantic):
        if c == 0:
            continue
        n, comp = cv2.connectedComponents((semantic == c).astype(np.uint8), connectivity=8)
        for k in range(1, n):
            m = comp == k
            if m.sum() < min_area:
                continue
            masks.append(m)
            classes.append(int(c) - 1)
            values.append(float(scores[c][m].mean()) if scores is not None else 1.0)
    if not masks:
        return _empty({})
    binary = np.stack(masks)
    order = np.argsort(-binary.reshape(len(binary), -1).sum(1), kind="stable")
    binary = binary[order]
    return MaskSet(masks_to_rles(binary), masks_to_boxes(binary), np.asarray(values, np.float32)[order],
                   np.asarray(classes, np.int64)[order])


def automatic_masks(auto: MaskSet, settings: LabelSettings) -> MaskSet:
    """SAM automatic masks for refinement: a grid's masks with predicted IoU ≥ ``min_iou_pred`` and
    at least ``min_area`` pixels, mask-NMSed at ``nms_iou``."""
    iou = np.asarray(auto.data.get("iou_pred", auto.scores), np.float32)
    keep = np.flatnonzero((iou >= settings.min_iou_pred) & (rle_areas(auto.masks) >= settings.min_area))
    keep = keep[mask_nms([auto.masks[i] for i in keep], iou[keep], settings.nms_iou)] if len(keep) else keep
    return MaskSet([auto.masks[i] for i in keep], auto.boxes[keep], iou[keep])
