"""A few procedural sample images (shapes on textured backgrounds) for quickstarts and benchmarks.

Not ground truth and not the toy world: just real image files of varied sizes and formats, so a
newcomer can run ``usam-ray embed`` without bringing a dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sample_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One (height, width, 3) uint8 image: a noisy gradient with 1–4 filled shapes."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(40, 200, 3)
    tilt = rng.uniform(-60, 60, 3)
    bg = base[None, None] + tilt[None, None] * (xx / max(width, 1))[..., None]
    bg = np.clip(bg + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
        r = rng.uniform(0.08, 0.3) * min(height, width)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif kind == 1:
            draw.rectangle([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=colour)
        else:
            angles = np.linspace(0, 2 * np.pi, 4)[:-1] + rng.uniform(0, np.pi)
            draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles], fill=colour)
    return np.asarray(img)


def write_sample_images(out: Path, n: int = 24, seed: int = 0, min_side: int = 96, max_side: int = 320,
                        shape: tuple[int, int] | None = None) -> list[Path]:
    """Write ``n`` sample images (PNG and JPEG, sides in [min_side, max_side], or all of
    ``shape`` (h, w) when given) under ``out``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        if shape is not None:
            h, w = shape
        path = out / f"sample_{i:04d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(sample_image(rng, h, w)).save(path)
        paths.append(path)
    return paths
