"""UO-SAM refinement on held-out toy scenes: mIoU gains per coarse input and per class, and time.

Quality: reads a demo run (``usam-ray demo``: 60 toy scenes of seed 777, which no training uses;
``--run`` names it, else the demo is run into a temporary folder) and prints, for each coarse input
(coarsened ground truth: ×8 blocks, blur, ±2 px erosion/dilation, seed 778; U-SAM's labels;
FMbSeg's base labels), the mIoU of the input, of LRO only and of LRO + GRO, and the per-class IoU
gains (percentage points).

Time: seconds per image of UO-SAM in one process (no Ray) on ``--scenes`` toy scenes with the
shipped toy SAM, LRO only and LRO + GRO (GRO's background-vote choice both ways, with its mIoU on
coarsened ground truth), on this machine's device; with ``--real N`` also on N 375×500 images
with a random-weight SAM ViT-H (what the paper's 1.26 s/img on an RTX 3090 compares with).

    python bench/uosam.py [--run runs/demo] [--scenes 60] [--real 2] [--device cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _report import print_results

INPUTS = {"coarse": "coarsened GT", "usam": "U-SAM", "fmbseg": "FMbSeg base"}


def quality(run: Path) -> dict:
    """mIoU of each coarse input, LRO and LRO + GRO, and per-class gains, from the demo's reports."""
    comparison = json.loads((run / "eval" / "comparison.json").read_text())
    out: dict = {}
    for key, name in INPUTS.items():
        rows = [comparison.get(k) for k in (key, f"{key}_uosam_lro", f"{key}_uosam")]
        if None in rows:
            continue
        per = [json.loads(Path(r["report"]).read_text())["semantic"]["per_class_iou"] for r in rows]
        out[f"{name} mIoU"] = round(100 * rows[0]["miou"], 2)
        out[f"{name} +LRO"] = round(100 * (rows[1]["miou"] - rows[0]["miou"]), 2)
        out[f"{name} +LRO+GRO"] = round(100 * (rows[2]["miou"] - rows[0]["miou"]), 2)
        for label, p in (("LRO", per[1]), ("LRO+GRO", per[2])):
            gains = {c: round(100 * ((p[c] or 0) - (per[0][c] or 0)), 1) for c in per[0]}
            out[f"{name} {label} per class"] = " ".join(f"{c} {v:+.1f}" for c, v in gains.items())
    return out


def timing(scenes: int, device: str) -> dict:
    """s/img of LRO and LRO + GRO with the toy SAM, in process; GRO's background choice both ways."""
    import torch

    from usam_ray.config import LabelSettings, SamConfig
    from usam_ray.data.toyscenes import coarsen_labels, scene
    from usam_ray.methods.sam_embed import SamMaskEmbedder, prepare_image
    from usam_ray.methods.uosam import UoSam
    from usam_ray.models.registry import ResolvedModel, resolve
    from usam_ray.models.sam import load_sam, spec_with_arch

    zoo = Path(__file__).parents[1] / "usam_ray" / "toyworld" / "zoo"
    r = resolve("sam:toy", zoo)
    embedder = SamMaskEmbedder(load_sam(ResolvedModel(spec_with_arch(r), r.location, r.local)),
                               SamConfig(points_per_side=10), device=device)
    rng = np.random.default_rng(2_000_000)
    data = []
    for _ in range(scenes):
        sc = scene(rng, 128)
        data.append((sc, coarsen_labels(sc.semantic, rng)))
    settings = LabelSettings(min_iou_pred=0.5, nms_iou=0.5)
    out: dict = {"toy scenes": scenes, "device": device}
    base = np.zeros((6, 6), np.int64)
    for sc, coarse in data:
        base += np.bincount(sc.semantic.ravel().astype(int) * 6 + coarse.ravel(), minlength=36).reshape(6, 6)
    base_iou = np.diag(base) / np.maximum(base.sum(0) + base.sum(1) - np.diag(base), 1)
    out["coarsened GT mIoU"] = round(100 * float(base_iou.mean()), 2)
    for name, kw in (("LRO", dict(use_global=False)), ("LRO+GRO", dict()),
                     ("LRO+GRO background votes", dict(background_votes=True))):
        uo = UoSam(embedder, settings, every_component=True, **kw)
        conf = np.zeros((6, 6), np.int64)
        start = time.perf_counter()
        for sc, coarse in data:
            padded, size = prepare_image(sc.image, embedder.image_size)
            refined = uo.refine_batch(padded[None], [size], [coarse])[0].semantic
            conf += np.bincount(sc.semantic.ravel().astype(int) * 6 + refined.ravel(), minlength=36).reshape(6, 6)
        if device == "cuda":
            torch.cuda.synchronize()
        iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
        out[f"{name} s/img"] = round((time.perf_counter() - start) / scenes, 4)
        out[f"{name} mIoU on coarsened GT"] = round(100 * float(iou.mean()), 2)
    return out


def real_timing(n: int, device: str) -> dict:
    """s/img of UO-SAM (LRO + GRO, 32² grid) with a random-weight SAM ViT-H on n 375×500 images."""
    from usam_ray.config import LabelSettings, SamConfig
    from usam_ray.methods.sam_embed import SamMaskEmbedder, prepare_image
    from usam_ray.methods.uosam import UoSam
    from usam_ray.models.registry import ResolvedModel, resolve
    from usam_ray.models.sam import load_sam, spec_with_arch
    from usam_ray.models.tiny import write_random_full_size

    with tempfile.TemporaryDirectory() as d:
        write_random_full_size("sam:vit_h", Path(d))
        r = resolve("sam:vit_h", Path(d))
        sam = load_sam(ResolvedModel(spec_with_arch(r), r.location, r.local))
    precision = "bf16" if device == "cuda" else "fp32"
    embedder = SamMaskEmbedder(sam, SamConfig(points_per_side=32, precision=precision), device=device)
    uo = UoSam(embedder, LabelSettings(min_iou_pred=0.5), every_component=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (375, 500, 3), dtype=np.uint8) for _ in range(n + 1)]
    coarse = [np.kron(rng.integers(0, 4, (47, 63)), np.ones((8, 8), int))[:375, :500].astype(np.uint8) for _ in images]
    times = []
    for img, c in zip(images, coarse):
        padded, size = prepare_image(img, embedder.image_size)
        start = time.perf_counter()
        uo.refine_batch(padded[None], [size], [c])
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"ViT-H images": n, "ViT-H LRO+GRO s/img (after 1 warm-up)": round(float(np.mean(times[1:])), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a demo run directory (default: run the demo in a temporary one)")
    parser.add_argument("--scenes", type=int, default=60, help="toy scenes for the timing (fewer vary a lot: 20 gave a loss)")
    parser.add_argument("--real", type=int, default=0, help="also time N images with random-weight SAM ViT-H")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as d:
        run = args.run
        if run is None:
            run = Path(d) / "demo"
            subprocess.run([sys.executable, "-m", "usam_ray.cli", "demo", "--out", str(run)], check=True,
                           stdout=subprocess.DEVNULL)
        results.update(quality(run))
    results.update(timing(args.scenes, args.device))
    if args.real:
        results.update(real_timing(args.real, args.device))
    print_results(results, args.json)


if __name__ == "__main__":
    main()
