"""Session fixtures: one tiny model zoo, one local Ray instance, image folders with bad files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tests never reach a model hub: fail fast instead of retrying DNS look-ups.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Path:
    """The tiny random zoo written by ``usam-ray models tiny`` (once per session)."""
    from usam_ray.models.tiny import write_tiny_zoo

    path = tmp_path_factory.mktemp("zoo")
    write_tiny_zoo(path)
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session (2 CPUs, like this machine)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # as init_ray sets for its instances
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, fmt)
    return buf.getvalue()


def write_images(root: Path, n: int, seed: int = 0, bad: bool = True) -> dict[str, list[str]]:
    """Write ``n`` small RGB images (mixed sizes, PNG/JPEG, some in subfolders) and, if ``bad``,
    a corrupt JPEG, a truncated PNG, a zero-byte file, a text file and a grayscale/RGBA/16-bit image.

    Returns:
        {"ok": ids that must embed, "bad": ids that must be error rows, "skipped": non-image ids}.
    """
    rng = np.random.default_rng(seed)
    ok: list[str] = []
    for i in range(n):
        h, w = int(rng.integers(24, 80)), int(rng.integers(24, 80))
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        rel = f"{'sub/' if i % 3 == 0 else ''}img_{i:03d}.{'jpg' if i % 2 else 'png'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / rel)
        ok.append(rel)
    out = {"ok": ok, "bad": [], "skipped": []}
    if bad:
        (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
        full = png_bytes(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        (root / "truncated.png").write_bytes(full[: len(full) // 2])
        (root / "zero.png").write_bytes(b"")
        (root / "readme.txt").write_text("not an image")
        Image.fromarray(rng.integers(0, 255, (30, 20), dtype=np.uint8), "L").save(root / "gray.png")
        Image.fromarray(rng.integers(0, 255, (30, 20, 4), dtype=np.uint8), "RGBA").save(root / "rgba.png")
        Image.fromarray(rng.integers(0, 65535, (25, 35), dtype=np.uint16)).save(root / "deep16.png")
        out["ok"] += ["gray.png", "rgba.png", "deep16.png"]
        out["bad"] = ["corrupt.jpg", "truncated.png", "zero.png"]
        out["skipped"] = ["readme.txt"]
    return out
