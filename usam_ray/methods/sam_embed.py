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
from typing import Iterator, Sequence

import numpy as np

from ..config import RuntimeConfig, SamConfig
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
    from PIL import Image

    # segment_anything's ResizeLongestSide.apply_image, without importing torch: torchvision
    # resizes a PIL image with PIL's bilinear filter, to the same rounded size.
    h, w = resized_shape(image.shape[0], image.shape[1], long_side)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    padded = np.zeros((long_side, long_side, 3), dtype=np.uint8)
    padded[:h, :w] = resized
    return padded, (h, w)


class SamMaskEmbedder:
    """Per-prompt mask embeddings of images with a loaded SAM.

    The model is set up for inference here (moved to ``device``, encoder cast to the precision,
    attention swapped for SDPA, optionally compiled): pass a model this embedder may own.

    Args:
        sam (segment_anything.modeling.Sam): the model (modified in place).
        settings (SamConfig): grid, thresholds, precision and ``compile`` (the config's ``model``
            and ``checkpoint`` are not read: the model is already loaded).
        runtime (RuntimeConfig): ``mask_chunk`` and ``mask_pixel_budget`` bound the full-size
            masks upsampled at a time; with ``compile``, encoder batches are padded to
            ``batch_size`` so that one compiled graph serves every batch.
        device (str): torch device, e.g. "cpu" or "cuda".
    """

    def __init__(self, sam, settings: SamConfig | None = None, runtime: RuntimeConfig | None = None,
                 device: str = "cpu") -> None:
        import torch

        from ..models.sam_fast import resolve_precision, use_sdpa_attention

        self.torch = torch
        self.settings = settings = settings or SamConfig()
        self.runtime = runtime or RuntimeConfig()
        self.device = torch.device(device)
        self.dtype = resolve_precision(settings.precision, device)
        self.sam = sam.to(self.device).eval()
        use_sdpa_attention(self.sam)
        self.sam.image_encoder.to(self.dtype)
        self.encoder = self.sam.image_encoder
        if settings.compile:
            self.encoder = torch.compile(self.sam.image_encoder, dynamic=False)
        self.image_size = int(sam.image_encoder.img_size)
        self.num_mask_tokens = int(sam.mask_decoder.num_mask_tokens)
        self.token_dim = self.num_mask_tokens * int(sam.mask_decoder.transformer_dim)
        with torch.inference_mode():
            self.image_pe = self.sam.prompt_encoder.get_dense_pe()

    def embed(self, images: Sequence[np.ndarray]) -> list[MaskSet]:
        """Embed full RGB images: (H, W, 3) uint8 each, any sizes. One MaskSet per image."""
        prepared = [prepare_image(img, self.image_size) for img in images]
        return self.embed_prepared(
            np.stack([p[0] for p in prepared]),
            [p[1] for p in prepared],
            [img.shape[:2] for img in images],
        )

    def warm_up(self, batch: int) -> float:
        """Run the encoder once on a zero batch (compiles it when ``compile`` is set); seconds taken."""
        import time

        start = time.perf_counter()
        zeros = np.zeros((max(1, batch), self.image_size, self.image_size, 3), np.uint8)
        with self.torch.inference_mode():
            self.encode(zeros, [(self.image_size, self.image_size)] * len(zeros))
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def encode(self, padded: np.ndarray, input_sizes: Sequence[tuple[int, int]]):
        """Image embeddings of a batch: (B, S, S, 3) uint8 → (B, C, h, w) in the encoder's dtype."""
        torch = self.torch
        x = torch.as_tensor(padded, device=self.device).permute(0, 3, 1, 2).float().contiguous()
        x = (x - self.sam.pixel_mean) / self.sam.pixel_std
        for i, (h, w) in enumerate(input_sizes):  # SAM pads with zeros after normalising
            x[i, :, h:, :] = 0
            x[i, :, :, w:] = 0
        n = x.shape[0]
        pad_to = self.runtime.batch_size if self.settings.compile else 0
        if pad_to > n:  # one compiled shape for all batches
            x = torch.cat([x, x.new_zeros((pad_to - n, *x.shape[1:]))])
        return self.encoder(x.to(self.dtype))[:n]

    def embed_prepared(
        self,
        padded: np.ndarray,
        input_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]],
        features=None,
    ) -> list[MaskSet]:
        """Embed images already resized and padded by ``prepare_image``.

        The encoder runs once for the batch; each image's grid goes through the decoder in one
        call; the best masks of all images of the same size are post-processed together on the
        device (in chunks bounded by the runtime's ``mask_chunk`` and ``mask_pixel_budget``).

        Args:
            padded (np.ndarray): (B, S, S, 3) uint8.
            input_sizes (list[(h, w)]): resized size of each image inside its pad.
            original_sizes (list[(H, W)]): original size of each image.
            features (torch.Tensor | None): the batch's image embeddings from ``encode`` when the
                caller already has them (the encoder then does not run again).

        Returns:
            B MaskSets with P = points_per_side² entries: ``masks`` P RLE dicts of size (H, W),
            ``boxes`` (P, 4) float32 xyxy, ``scores`` = iou_pred (P,), and ``data`` with ``tokens``
            (P, token_dim) float32, ``iou_pred`` (P,), ``stability`` (P,), ``points`` (P, 2) float32.
        """
        torch = self.torch
        if padded.ndim != 4 or padded.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"embed_prepared expects (B, {self.image_size}, {self.image_size}, 3), got {padded.shape}")
        input_sizes = [tuple(int(v) for v in s) for s in input_sizes]
        original_sizes = [tuple(int(v) for v in s) for s in original_sizes]
        with torch.inference_mode():
            if features is None:
                features = self.encode(padded, input_sizes)
            decoded = [self._decode_grid(features[i : i + 1], input_sizes[i], original_sizes[i])
                       for i in range(len(input_sizes))]
            groups: dict[tuple, list[int]] = {}
            for i, key in enumerate(zip(input_sizes, original_sizes)):
                groups.setdefault(key, []).append(i)
            post: dict[int, tuple] = {}
            for (input_size, original_size), members in groups.items():
                logits = torch.cat([decoded[i][0] for i in members])
                for i, part in zip(members, self._postprocess(logits, input_size, original_size, len(members))):
                    post[i] = part
            ious = torch.stack([d[1] for d in decoded]).float().cpu().numpy()  # one transfer for the batch
            tokens = torch.stack([d[2] for d in decoded]).float().cpu().numpy()
        sets = []
        for i, (iou, tok, (_, _, _, points)) in enumerate(zip(ious, tokens, decoded)):
            rles, stability, boxes = post[i]
            sets.append(MaskSet(
                masks=rles,
                boxes=boxes,
                scores=iou,
                data={"tokens": tok, "iou_pred": iou, "stability": stability, "points": points},
            ))
        return sets

    def _decode_grid(self, features, input_size: tuple[int, int], original_size: tuple[int, int]):
        """One image's grid → best low-res logits (P, 1, h, w), best iou (P,) and tokens (P, token_dim),
        all on the device, and the prompt points (P, 2) float32 in original pixels."""
        torch = self.torch
        height, width = original_size
        points = grid_points(self.settings.points_per_side, height, width)
        scale = np.array([input_size[1] / width, input_size[0] / height])  # ResizeLongestSide.apply_coords
        points_input = torch.as_tensor(points * scale, dtype=torch.float32, device=self.device)
        low_res, iou_pred, tokens = self.decode_points(features, points_input)
        best = iou_pred.argmax(dim=1)
        rows = torch.arange(len(best), device=self.device)
        return low_res[rows, best][:, None], iou_pred[rows, best], tokens, points.astype(np.float32)

    def _postprocess(self, best_low, input_size, original_size, images: int) -> list[tuple]:
        """Best logits of ``images`` same-size images ((images·P, 1, h, w)) → per image
        (RLE list, stability (P,) float32, boxes (P, 4) float32), computed on the device."""
        from .sam_post import chunk_size, mask_boxes, rle_encode, stability_scores, upsample_logits

        torch = self.torch
        s = self.settings
        chunk = chunk_size(len(best_low), self.image_size, original_size, self.runtime.mask_pixel_budget,
                           self.runtime.mask_chunk)
        rles: list[dict] = []
        stability, boxes = [], []
        for start in range(0, len(best_low), chunk):
            logits = upsample_logits(best_low[start : start + chunk], self.image_size, input_size, original_size)
            binary = logits > s.mask_threshold
            stability.append(stability_scores(logits, s.mask_threshold, s.stability_offset))
            boxes.append(mask_boxes(binary))
            rles.extend(rle_encode(binary))
        stab = torch.cat(stability).cpu().numpy()
        box = torch.cat(boxes).cpu().numpy()
        p = len(best_low) // images
        return [(rles[k * p : (k + 1) * p], stab[k * p : (k + 1) * p], box[k * p : (k + 1) * p]) for k in range(images)]

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
            low_res (P, 3, 4h, 4w) float32 multimask logits, iou_pred (P, 3), tokens (P, token_dim).
        """
        coords = points_input[:, None, :].float()
        return self.decode_prompts(features, coords, self.torch.ones(coords.shape[:2], dtype=self.torch.int,
                                                                     device=self.device))

    def decode_prompts(self, features, coords, labels, boxes=None, mask_inputs=None, multimask: bool = True):
        """One batched prompt-encoder + mask-decoder call for Q prompts of several points each.

        The prompt encoder runs in float32; the mask decoder under autocast at the embedder's
        precision (plain float32 when that is fp32).

        Args:
            features (torch.Tensor): (1, C, h, w) image embedding.
            coords (torch.Tensor): (Q, n, 2) points in the model's input frame.
            labels (torch.Tensor): (Q, n) int: 1 positive, 0 negative.
            boxes (torch.Tensor | None): (Q, 4) xyxy boxes in the input frame.
            mask_inputs (torch.Tensor | None): (Q, 1, 4h, 4w) low-res logits as dense prompts.
            multimask (bool): SAM's three ambiguity masks (True) or its single-mask output (False:
                what SAM is trained to give for an unambiguous prompt such as a mask and a box).

        Returns:
            low_res (Q, M, 4h, 4w) float32 logits, iou_pred (Q, M) with M = 3 (multimask) or 1,
            tokens (Q, token_dim).
        """
        torch = self.torch
        coords = coords.float().to(self.device)
        labels = labels.to(self.device)
        sparse, dense = self.sam.prompt_encoder(points=(coords, labels), boxes=boxes, masks=mask_inputs)
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        with autocast, self._capture_mask_tokens() as captured:
            low_res, iou_pred = self.sam.mask_decoder(
                image_embeddings=features,
                image_pe=self.image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
        tokens = captured["tokens"].reshape(coords.shape[0], -1)
        return low_res.float(), iou_pred.float(), tokens

    def full_size_masks(self, low_res, input_size: tuple[int, int], original_size: tuple[int, int]):
        """(Q, 1, 4h, 4w) low-res logits → (Q, H, W) bool masks at the original size (on the device)."""
        from .sam_post import upsample_logits

        return upsample_logits(low_res, self.image_size, input_size, original_size) > self.settings.mask_threshold
