"""SAM mask post-processing on the model's device, batched: upsampling, thresholding, stability,
boxes and COCO run-length encoding.

Everything up to the run boundaries runs as tensor ops on the device where the logits are (one
host transfer per chunk: the change positions, a few hundred integers per mask); only the final
COCO counts string is made on the host, by pycocotools from the run lengths (``frPyObjects``), so
the counts are byte for byte what ``pycocotools.mask.encode`` gives for the same masks.

Pure torch/numpy: no Ray here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def upsample_logits(low_res: torch.Tensor, image_size: int, input_size: tuple[int, int],
                    original_size: tuple[int, int]) -> torch.Tensor:
    """SAM's ``postprocess_masks``: (N, 1, h, w) low-res logits → (N, H, W) float32 logits.

    Bilinear to (S, S), crop the padding to ``input_size``, bilinear to ``original_size``,
    exactly as ``segment_anything.modeling.Sam.postprocess_masks`` (computed in float32).
    """
    x = F.interpolate(low_res.float(), (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, original_size, mode="bilinear", align_corners=False)[:, 0]


def stability_scores(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """segment_anything's stability score of (N, H, W) logits → (N,) float32; 0 where even the low
    threshold gives an empty mask (SAM would divide by zero)."""
    from segment_anything.utils.amg import calculate_stability_score

    return calculate_stability_score(logits, threshold, offset).float().nan_to_num(0.0)


def mask_boxes(binary: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool → (N, 4) float32 xyxy with x2/y2 exclusive; zeros for empty masks."""
    from segment_anything.utils.amg import batched_mask_to_box

    boxes = batched_mask_to_box(binary).float()
    nonempty = binary.flatten(1).any(dim=1)
    return torch.where(nonempty[:, None], boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device), boxes)


def run_lengths(binary: torch.Tensor) -> list[np.ndarray]:
    """COCO's uncompressed RLE of (N, H, W) bool masks, computed on their device.

    Pixels are read in column-major (Fortran) order, as COCO does; runs alternate 0s and 1s and
    start with a (possibly empty) run of 0s.

    Returns:
        N int64 arrays of run lengths, each summing to H·W.
    """
    n, h, w = binary.shape
    if n == 0:
        return []
    flat = binary.transpose(1, 2).reshape(n, h * w)
    rows, cols = (flat[:, 1:] != flat[:, :-1]).nonzero(as_tuple=True)
    first = flat[:, 0].cpu().numpy()
    rows, cols = rows.cpu().numpy(), cols.cpu().numpy() + 1
    splits = np.cumsum(np.bincount(rows, minlength=n))[:-1]
    total = np.array([h * w], np.int64)
    out = []
    for i, changes in enumerate(np.split(cols, splits)):
        runs = np.diff(np.concatenate(([0], changes, total)))
        out.append(np.concatenate(([0], runs)) if first[i] else runs)
    return out


def rle_encode(binary: torch.Tensor) -> list[dict]:
    """(N, H, W) bool masks on any device → N COCO RLE dicts ``{"size": [H, W], "counts": bytes}``,
    equal to ``pycocotools.mask.encode`` of the same masks."""
    from pycocotools import mask as mask_utils

    n, h, w = binary.shape
    if n == 0:
        return []
    runs = run_lengths(binary)
    return mask_utils.frPyObjects([{"size": [h, w], "counts": r} for r in runs], h, w)


def chunk_size(num_masks: int, image_size: int, original_size: Sequence[int], pixel_budget: int, limit: int) -> int:
    """Masks to post-process at a time so that a chunk's full-size logits stay under
    ``pixel_budget`` pixels (at least 1, at most ``limit``)."""
    per_mask = max(image_size * image_size, int(original_size[0]) * int(original_size[1]))
    return max(1, min(limit, num_masks, pixel_budget // per_mask))
