"""Embed throughput, in one invocation on the same images and the same tiny SAM:

1. the Ray Data embed pipeline (``run_embed``: read tasks → SAM actor pool → Parquet shards)
   vs the same ``SamMaskEmbedder`` called in a plain in-process loop (decode + embed, no writes);
2. our batched grid (one prompt-encoder/decoder call per image, all prompts) vs segment_anything's
   ``SamAutomaticMaskGenerator(points_per_side=10, crop_n_layers=0)`` — with its default filters,
   and with filters off so that it keeps every mask like we do.

Usage: python bench/embed.py [--n 48] [--models ZOO] [--json]
Ratios > 1 mean the first of each pair is faster. Timings are wall-clock on this machine; only the
ratios within one invocation are meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=48, help="number of images")
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: a fresh tiny zoo)")
    parser.add_argument("--model", default="sam:tiny")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import numpy as np
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from usam_ray.config import EmbedConfig, load_config
    from usam_ray.data.decode import decode_image
    from usam_ray.data.samples import write_sample_images
    from usam_ray.methods.sam_embed import EmbedSettings, SamMaskEmbedder
    from usam_ray.models import resolve
    from usam_ray.models.sam import load_sam
    from usam_ray.models.tiny import write_tiny_zoo
    from usam_ray.pipelines.embed import run_embed
    from usam_ray.pipelines.runtime import init_ray

    work = Path(tempfile.mkdtemp(prefix="usam-bench-"))
    zoo = args.models or work / "zoo"
    if args.models is None:
        write_tiny_zoo(zoo)
    paths = write_sample_images(work / "images", args.n, seed=1)
    sam = load_sam(resolve(args.model, zoo))
    results: dict[str, float | int | str] = {"images": args.n, "model": args.model, "torch_threads": torch.get_num_threads()}

    # 1a. plain in-process loop: decode + embed, batch 4 like the pipeline's default
    embedder = SamMaskEmbedder(sam, EmbedSettings(points_per_side=10))
    start = time.perf_counter()
    batch = []
    for p in paths:
        batch.append(decode_image(p.read_bytes(), str(p), 10**8))
        if len(batch) == 4:
            embedder.embed(batch)
            batch = []
    if batch:
        embedder.embed(batch)
    loop_s = time.perf_counter() - start
    results["loop_images_per_s"] = args.n / loop_s

    # 1b. the Ray pipeline, Ray already started (its start-up is not counted; actor start-up is)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    resources = init_ray(None)
    cfg = load_config(EmbedConfig, None, [f"images={work / 'images'}", f"out={work / 'run'}",
                                          f"runtime.models_dir={zoo}", f"sam.model={args.model}",
                                          "runtime.progress=false"])
    start = time.perf_counter()
    summary = run_embed(cfg, log=lambda _l: None)
    ray_s = time.perf_counter() - start
    assert summary.embedded == args.n, summary
    results["ray_cpus"] = resources.cpus
    results["ray_images_per_s"] = args.n / ray_s
    results["ray_vs_loop"] = results["ray_images_per_s"] / results["loop_images_per_s"]

    # 2. our batched grid vs SamAutomaticMaskGenerator, per image, same decoded images
    images = [decode_image(p.read_bytes(), str(p), 10**8) for p in paths]
    start = time.perf_counter()
    for img in images:
        embedder.embed([img])
    ours_s = time.perf_counter() - start
    amg = SamAutomaticMaskGenerator(sam, points_per_side=10, crop_n_layers=0)
    start = time.perf_counter()
    for img in images:
        amg.generate(img)
    amg_s = time.perf_counter() - start
    amg_all = SamAutomaticMaskGenerator(sam, points_per_side=10, crop_n_layers=0, pred_iou_thresh=0.0,
                                        stability_score_thresh=0.0, box_nms_thresh=1.0)
    start = time.perf_counter()
    kept = [len(amg_all.generate(img)) for img in images]
    amg_all_s = time.perf_counter() - start
    results["grid_images_per_s"] = args.n / ours_s
    results["amg_images_per_s"] = args.n / amg_s
    results["amg_keep_all_images_per_s"] = args.n / amg_all_s
    results["amg_keep_all_masks_per_image"] = float(np.mean(kept))
    results["grid_vs_amg"] = amg_s / ours_s
    results["grid_vs_amg_keep_all"] = amg_all_s / ours_s

    if args.json:
        print(json.dumps(results))
    else:
        for k, v in results.items():
            print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")


if __name__ == "__main__":
    main()
