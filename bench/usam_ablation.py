"""U-SAM ablation on the toy world (the paper's Table 4 and its SAM+CLIP baseline), one invocation:
MIL + uncertainty distillation (student) vs MIL only (teacher) vs SAM + CLIP (toy CLIP, 0.70
threshold, same NMS) vs all-background, all scored by the same evaluator on the same held-out
toy scenes.

Usage: python bench/usam_ablation.py [--out runs/ablation] [--scenes 60] [--per-class 80] [--json]
Toy-world figures say the pipeline learns; they are not PASCAL VOC or COCO results.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from usam_ray.config import DemoConfig
    from usam_ray.workflows import comparison_table, run_demo

    out = args.out or Path(tempfile.mkdtemp(prefix="usam-ablation-"))
    result = run_demo(DemoConfig(out=out, scenes=args.scenes, per_class=args.per_class), log=lambda _l: None)
    if args.json:
        print(json.dumps(result["comparison"]))
    else:
        print(comparison_table(result["comparison"]))
        print(f"\nreports under {out}")


if __name__ == "__main__":
    main()
