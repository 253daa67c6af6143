"""Decode image bytes to RGB uint8, converting every mode PIL reads, or fail with a clear reason."""

from __future__ import annotations

import io
import warnings

import numpy as np


class ImageDecodeError(ValueError):
    """An input that cannot become an RGB image; ``kind`` is a short machine-readable reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def _to_rgb(img) -> np.ndarray:
    """Any PIL image → (H, W, 3) uint8 RGB. 16/32-bit and float modes are scaled to 8 bits;
    alpha is composited over black (as dropping it would); CMYK, palette, LA, YCbCr convert."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)
        gray = np.clip(np.nan_to_num(scaled) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes, path: str, max_pixels: int) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, TIFF, …) to RGB, applying EXIF orientation.

    Args:
        data (bytes): the file's contents.
        path (str): where they came from (only for messages).
        max_pixels (int): larger images are refused before their pixels are decoded.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        ImageDecodeError: kind ``empty`` (zero bytes), ``too_large``, ``not_an_image`` or ``corrupt``;
            the message names ``path``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) == 0:
        raise ImageDecodeError("empty", f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    "too_large", f"{path}: image is {w}x{h} = {w * h:,} pixels, over data.max_pixels={max_pixels:,}"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        if data.startswith(_IMAGE_MAGIC):
            raise ImageDecodeError("corrupt", f"{path}: starts like an image file but cannot be parsed") from exc
        raise ImageDecodeError("not_an_image", f"{path}: not an image format PIL can identify") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_large", f"{path}: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError("corrupt", f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageDecodeError("corrupt", f"{path}: image has zero size {rgb.shape[:2]}")
    return np.ascontiguousarray(rgb)
