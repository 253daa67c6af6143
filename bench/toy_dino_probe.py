"""How well the toy DINOv2's patch features separate the toy classes, next to what it was distilled
towards: the class-balanced linear probe of ``usam-ray toy check`` (``toy_dino.balanced_probe``,
fitted on 300 scenes of the probe seed, scored on 200 held-out scenes of seed 2,000,000), with each
class's recall, on

- the shipped toy DINOv2's patch tokens (``dino:toy``);
- its distillation target: the toy CLIP's embedding of each object's cut-out (averaged over the
  image's channel orders) placed on the patches the object covers (zero elsewhere), as
  ``toy_dino.train_dino`` builds it;
- the toy SAM's image-encoder features (the other distillation target, averaged the same way).

    python bench/toy_dino_probe.py [--json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _report import print_results


def features(scenes, dino, clip, sam) -> dict:
    """Per patch of ``scenes``: DINOv2 tokens, the CLIP cut-out target, SAM features, the label."""
    from usam_ray.toyworld.toy_dino import dino_patch_features, patch_labels, teacher_targets

    sam_features, cutouts, owners = teacher_targets(scenes, sam, clip)
    out: dict = {"dino": [], "clip cut-out target": [], "y": []}
    for i in range(0, len(scenes), 50):
        images = np.stack([s.image for s in scenes[i:i + 50]])
        out["dino"].append(dino_patch_features(dino, images).numpy().reshape(-1, dino.config.hidden_size))
    for s, cut, owner in zip(scenes, cutouts, owners):
        target = np.zeros((len(owner), cut.shape[1]), np.float32)
        target[owner >= 0] = cut.numpy()[owner[owner >= 0]]
        out["clip cut-out target"].append(target)
        out["y"].append(patch_labels(s.semantic))
    return {"sam": sam_features.flatten(0, 1).numpy(), **{k: np.concatenate(v) for k, v in out.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from usam_ray.data.toyscenes import CLASSES
    from usam_ray.models.clip import load_clip
    from usam_ray.models.dino import load_dino
    from usam_ray.models.registry import resolve
    from usam_ray.models.sam import load_sam
    from usam_ray.toyworld.common import EVAL_SEED, PROBE_SEED, scene_pool
    from usam_ray.toyworld.toy_dino import balanced_probe

    zoo = Path(__file__).parents[1] / "usam_ray" / "toyworld" / "zoo"
    dino = load_dino(resolve("dino:toy", zoo)).model.eval()
    clip = load_clip(resolve("clip:toy", zoo)).model
    sam = load_sam(resolve("sam:toy", zoo)).eval()
    train = features(scene_pool(300, PROBE_SEED), dino, clip, sam)
    test = features(scene_pool(200, EVAL_SEED), dino, clip, sam)
    results: dict = {}
    for name in ("dino", "clip cut-out target", "sam"):
        accuracy, recalls = balanced_probe(train[name], train["y"], test[name], test["y"])
        results[f"{name} balanced accuracy"] = float(np.mean(recalls))
        for cls, r in zip(("background", *CLASSES), recalls):
            results[f"{name} recall {cls}"] = r
    print_results(results, args.json)


if __name__ == "__main__":
    main()
