"""SAM mask embeddings: a point grid per image, one batched decoder call, per-prompt outputs.

For every image, SAM's image encoder runs once (several images per call are batched through
the encoder); a ``points_per_side²`` grid of single positive point prompts goes through the prompt
encoder and mask decoder in one call. For every prompt we keep:

- ``tokens``: the decoder's output mask tokens (``num_mask_tokens`` × transformer_dim, flattened;
  4 × 256 = 1024 floats for real SAM), the embedding U-SAM classifies;
- the best of the three multimask outputs by predicted IoU, upsampled to the original image size
  (as ``SamPredictor.predict_torch(multimask_output=True)`` would give it), as COCO RLE;
- ``iou_pred``, ``stability`` (segment_anything's stability score on the full-size logits),
  ``boxes`` (xyxy, x2/y2 exclusive), ``points`` (prompt, original pixel coordinates).

Pure torch/numpy: no Ray here.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..masks import masks_to_rles
from ..types import MaskSet


def grid_points(points_per_side: int, height: int, width: int) -> np.ndarray:
    """The U-SAM/SAM prompt grid in pixel coordinates of an (height, width) image.

    Returns:
        (points_per_side², 2) float64 (x, y): cell centres, row-major (x varies fastest), exactly
        ``segment_anything.utils.amg.build_point_grid(n) * [width, height]``.
    """
    offset = 1.0 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    xs = np.tile(side[None, :], (points_per_side, 1))
    ys = np.tile(side[:, None], (1, points_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2) * np.array([width, height], dtype=np.float64)


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to ``long_side`` (SAM's ResizeLongestSide rounding)."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def prepare_image(image: np.ndarray, long_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize an RGB image for SAM and pad it to a square (the CPU half of SAM's preprocessing).

    Args:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        long_side (int): the model's input side S.

    Returns:
        padded (np.ndarray): (S, S, 3) uint8, the resized image at the top-left, zeros elsewhere.
        input_size (tuple[int, int]): (h, w) of the resized image inside ``padded``.
    """
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(long_side).apply_image(image)
    h, w = resized.shape[:2]
    padded = np.zeros((long_side, long_side, 3), dtype=np.uint8)
    padded[:h, :w] = resized
    return padded, (h, w)


@dataclass(frozen=True)
class EmbedSettings:
    """Settings of ``SamMaskEmbedder``.

    Attributes:
        points_per_side (int): grid side; points_per_side² prompts per image.
        mask_threshold (float): logit threshold for binary masks.
        stability_offset (float): offset of the stability score.
        mask_chunk (int): masks upsampled to full size at a time (memory bound on huge images).
    """

    points_per_side: int = 10
    mask_threshold: float = 0.0
    stability_offset: float = 1.0
    mask_chunk: int = 16


class SamMaskEmbedder:
    """Per-prompt mask embeddings of images with a loaded SAM.

    Args:
        sam (segment_anything.modeling.Sam): the model (moved to ``device`` here).
        settings (EmbedSettings): grid and thresholds.
        device (str): torch device, e.g. "cpu" or "cuda".
    """

    def __init__(self, sam, settings: EmbedSettings = EmbedSettings(), device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.sam = sam.to(device).eval()
        self.settings = settings
        self.device = torch.device(device)
        self.image_size = int(sam.image_encoder.img_size)
        self.num_mask_tokens = int(sam.mask_decoder.num_mask_tokens)
        self.token_dim = self.num_mask_tokens * int(sam.mask_decoder.transformer_dim)

    def embed(self, images: Sequence[np.ndarray]) -> list[MaskSet]:
        """Embed full RGB images: (H, W, 3) uint8 each, any sizes. One MaskSet per image."""
        prepared = [prepare_image(img, self.image_size) for img in images]
        return self.embed_prepared(
            np.stack([p[0] for p in prepared]),
            [p[1] for p in prepared],
            [img.shape[:2] for img in images],
        )

    def embed_prepared(
        self,
        padded: np.ndarray,
        input_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]],
    ) -> list[MaskSet]:
        """Embed images already resized and padded by ``prepare_image``.

        Args:
            padded (np.ndarray): (B, S, S, 3) uint8.
            input_sizes (list[(h, w)]): resized size of each image inside its pad.
            original_sizes (list[(H, W)]): original size of each image.

        Returns:
            B MaskSets with P = points_per_side² entries: ``masks`` P RLE dicts of size (H, W),
            ``boxes`` (P, 4) float32 xyxy, ``scores`` = iou_pred (P,), and ``data`` with ``tokens``
            (P, token_dim) float32, ``iou_pred`` (P,), ``stability`` (P,), ``points`` (P, 2) float32.
        """
        torch = self.torch
        if padded.ndim != 4 or padded.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"embed_prepared expects (B, {self.image_size}, {self.image_size}, 3), got {padded.shape}")
        with torch.inference_mode():
            x = torch.as_tensor(padded, device=self.device).permute(0, 3, 1, 2).float()
            x = (x - self.sam.pixel_mean) / self.sam.pixel_std
            for i, (h, w) in enumerate(input_sizes):  # SAM pads with zeros after normalising
                x[i, :, h:, :] = 0
                x[i, :, :, w:] = 0
            features = self.sam.image_encoder(x)
            return [
                self._decode_image(features[i : i + 1], tuple(input_sizes[i]), tuple(original_sizes[i]))
                for i in range(len(input_sizes))
            ]

    @contextmanager
    def _capture_mask_tokens(self) -> Iterator[dict]:
        """Capture the decoder transformer's output mask tokens during one decoder call."""
        box: dict = {}
        n = self.num_mask_tokens

        def hook(_module, _inputs, output):
            box["tokens"] = output[0][:, 1 : 1 + n, :]

        handle = self.sam.mask_decoder.transformer.register_forward_hook(hook)
        try:
            yield box
        finally:
            handle.remove()

    def decode_points(self, features, points_input: "torch.Tensor"):  # noqa: F821
        """One batched prompt-encoder + mask-decoder call for P single-point prompts on one image.

        Args:
            features (torch.Tensor): (1, C, h, w) image embedding.
            points_input (torch.Tensor): (P, 2) point prompts in the model's input frame.

        Returns:
            low_res (P, 3, 4h, 4w) multimask logits, iou_pred (P, 3), tokens (P, token_dim).
        """
        torch = self.torch
        coords = points_input[:, None, :].float()
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)
        sparse, dense = self.sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        with self._capture_mask_tokens() as captured:
            low_res, iou_pred = self.sam.mask_decoder(
                image_embeddings=features,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
        tokens = captured["tokens"].reshape(coords.shape[0], -1)
        return low_res, iou_pred, tokens

    def _decode_image(self, features, input_size: tuple[int, int], original_size: tuple[int, int]) -> MaskSet:
        torch = self.torch
        s = self.settings
        height, width = original_size
        points = grid_points(s.points_per_side, height, width)
        scale = np.array([input_size[1] / width, input_size[0] / height])  # ResizeLongestSide.apply_coords
        points_input = torch.as_tensor(points * scale, dtype=torch.float32, device=self.device)
        low_res, iou_pred, tokens = self.decode_points(features, points_input)
        best = iou_pred.argmax(dim=1)
        rows = torch.arange(len(best), device=self.device)
        best_low = low_res[rows, best][:, None]  # (P, 1, h, w)
        best_iou = iou_pred[rows, best]
        rles: list[dict] = []
        stability: list[np.ndarray] = []
        boxes: list[np.ndarray] = []
        for start in range(0, len(best), s.mask_chunk):
            logits = self.sam.postprocess_masks(best_low[start : start + s.mask_chunk], input_size, original_size)[:, 0]
            binary = logits > s.mask_threshold
            stability.append(_stability(logits, s.mask_threshold, s.stability_offset).cpu().numpy())
            boxes.append(_boxes(binary).cpu().numpy())
            rles.extend(masks_to_rles(binary.cpu().numpy()))
        return MaskSet(
            masks=rles,
            boxes=np.concatenate(boxes).astype(np.float32),
            scores=best_iou.float().cpu().numpy(),
            data={
                "tokens": tokens.float().cpu().numpy(),
                "iou_pred": best_iou.float().cpu().numpy(),
                "stability": np.concatenate(stability).astype(np.float32),
                "points": points.astype(np.float32),
            },
        )


def _stability(logits, threshold: float, offset: float):
    """segment_anything's stability score, 0 where even the low threshold gives an empty mask."""
    from segment_anything.utils.amg import calculate_stability_score

    score = calculate_stability_score(logits, threshold, offset)
    return score.nan_to_num(0.0)


def _boxes(binary):
    """(N, H, W) bool tensor → (N, 4) xyxy with x2/y2 exclusive; zeros for empty masks."""
    import torch
    from segment_anything.utils.amg import batched_mask_to_box

    boxes = batched_mask_to_box(binary).float()
    nonempty = binary.flatten(1).any(dim=1)
    return torch.where(nonempty[:, None], boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device), boxes)
