"""Evaluation throughput: the parallel evaluator (Ray Data tasks over shards, summed) vs a
single-process loop over the same fixture, in one invocation.

The fixture is a generic ground-truth folder of N synthetic 512×512 label maps (21 classes,
rectangles and a 255 boundary) and noisy predictions of them. Both paths run the same
``evaluate_shard`` code and must give the same confusion matrix (checked).

Usage: python bench/eval.py [--n 2000] [--shard-size 64] [--json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import print_results


def write_fixture(root: Path, n: int, size: int = 512, classes: int = 21, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "classes.txt").write_text("\n".join(["background"] + [f"class{i}" for i in range(1, classes)]) + "\n")
    (root / "masks").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "semantic").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        gt = np.zeros((size, size), np.uint8)
        for _ in range(4):
            y0, x0 = rng.integers(0, size - 64, 2)
            h, w = rng.integers(32, 256, 2)
            gt[y0:y0 + h, x0:x0 + w] = rng.integers(1, classes)
        pred = gt.copy()
        gt[::37] = 255
        y0, x0 = rng.integers(0, size - 128, 2)
        pred[y0:y0 + 128, x0:x0 + 128] = rng.integers(0, classes)
        Image.fromarray(gt, "L").save(root / "masks" / f"m{i:05d}.png")
        Image.fromarray(pred, "L").save(root / "labels" / "semantic" / f"m{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from usam_ray.eval.evaluate import evaluate_local, evaluate_parallel, prepare
    from usam_ray.runtime import init_ray

    root = Path(tempfile.mkdtemp(prefix="usam-bench-eval-"))
    t = time.perf_counter()
    write_fixture(root, args.n)
    print(f"fixture: {args.n} maps in {time.perf_counter() - t:.1f}s at {root}", file=sys.stderr)
    inputs = prepare(f"folder:{root}", root / "labels")

    t = time.perf_counter()
    local = evaluate_local(inputs)
    local_s = time.perf_counter() - t

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    resources = init_ray(None)  # start-up not counted
    t = time.perf_counter()
    par = evaluate_parallel(inputs, args.shard_size)
    par_s = time.perf_counter() - t
    assert np.array_equal(local.cm, par.cm), "parallel and single-process confusion matrices differ"

    results = {
        "images": args.n, "size": 512, "shard_size": args.shard_size, "ray_cpus": resources.cpus,
        "single_images_per_s": args.n / local_s, "parallel_images_per_s": args.n / par_s,
        "parallel_vs_single": local_s / par_s, "confusion_matrices_equal": True,
    }
    print_results(results, args.json)


if __name__ == "__main__":
    main()
