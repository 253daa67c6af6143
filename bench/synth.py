"""Stable Diffusion synthesis throughput of the synth stage (``DiffusionStage``: fp16 on CUDA,
one batched pipeline call per batch of prompts), per batch size, in one invocation.

Usage:
  python bench/synth.py                                   # CPU: the tiny random SD, 2 steps
  python bench/synth.py --device cuda --full-size         # SD v1-4 architecture, random weights,
                                                          # 512², 50 steps (the synth defaults)
Reports img/s per batch size and the ratio of the largest batch to batch 1.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _report import print_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--full-size", action="store_true", help="SD v1-4 architecture with random weights")
    parser.add_argument("--batches", default="1,8", help="batch sizes to time")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: 50 full size, 2 tiny)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch

    from usam_ray.models.registry import resolve
    from usam_ray.models.tiny import write_random_full_size, write_tiny_diffusion
    from usam_ray.pipelines.synth import DiffusionStage

    work = Path(tempfile.mkdtemp(prefix="usam-synth-bench-"))
    if args.full_size:
        name, size, steps = "diffusion:CompVis/stable-diffusion-v1-4", 512, args.steps or 50
        write_random_full_size(name, work)
    else:
        name, size, steps = "diffusion:tiny", 32, args.steps or 2
        write_tiny_diffusion(work)
    stage = DiffusionStage(resolve(name, work), "a photo of a {c}", steps, 7.5, size, args.device)
    results: dict = {"model": name, "device": args.device, "size": size, "steps": steps,
                     "dtype": str(stage.pipe.unet.dtype), "torch": torch.__version__}

    def batch(n: int) -> dict:
        return {"image_id": np.array([f"x/{i}" for i in range(n)], object),
                "cls": np.array(["dog"] * n, object), "seed": np.arange(n)}

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    sizes = [int(b) for b in args.batches.split(",")]
    stage(batch(sizes[0]))  # warm-up (kernels, allocator)
    for b in sizes:
        sync()
        start = time.perf_counter()
        out = stage(batch(b))
        sync()
        assert len(out["image"]) == b
        results[f"batch{b}_images_per_s"] = b / (time.perf_counter() - start)
    results["largest_batch_vs_batch1"] = results[f"batch{sizes[-1]}_images_per_s"] / results[f"batch{sizes[0]}_images_per_s"]
    print_results(results, args.json)


if __name__ == "__main__":
    main()
