"""FMbSeg Stage 1 on held-out toy scenes (seed 2,000,000: no training uses it), with the shipped
toy CLIP, SAM and DINOv2-free path (Stage 1 only):

- which dense CLIP variant localises: patch accuracy on object patches (each CLIP map cell's
  nearest class text against the ground-truth majority class of that cell; chance 0.2), for the
  ``value`` path (the paper's fix) and the last hidden state (``last``);
- class presence from crop votes (precision / recall against the scene's classes);
- the mIoU (background + 5 classes, in %) of Stage 1 pseudo label maps: 1.1 only, 1.1 + 75 % of
  1.2, 1.1 + 100 % of 1.2 (the paper's Table 2 balance), with CLIP's presence test and with the
  scene's image-level labels (the paper's semi-supervised variant).

    python bench/fmbseg_stage1.py [--scenes 40] [--pred-iou 0.8] [--json]
"""

from __future__ import annotations

import argparse

import numpy as np

from _report import print_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--pred-iou", type=float, default=0.8, help="Stage 1.2 predicted-IoU threshold "
                        "(paper 0.97; the toy SAM's predicted IoUs rarely reach it)")
    parser.add_argument("--points", type=int, default=10, help="SAM grid side for Stage 1.2")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from usam_ray.config import FmbsegSettings, SamConfig
    from usam_ray.data.toyscenes import CLASSES
    from usam_ray.eval.metrics import confusion_matrix, scores_from_confusion
    from usam_ray.methods.fmbseg import (
        STAGE_11, FmbsegModels, ImageInput, detected_classes, patch_targets, pseudo_label, pseudo_label_map,
        stage12_sample,
    )
    from usam_ray.methods.sam_embed import SamMaskEmbedder, prepare_image
    from usam_ray.models import resolve
    from usam_ray.models.clip import load_clip
    from usam_ray.models.registry import get_spec
    from usam_ray.models.sam import load_sam
    from usam_ray.toyworld.common import EVAL_SEED, scene_pool

    torch.manual_seed(0)
    scenes = scene_pool(args.scenes, EVAL_SEED)
    clip = load_clip(resolve("clip:toy"))
    embedder = SamMaskEmbedder(load_sam(resolve("sam:toy")), SamConfig(points_per_side=args.points))
    k = len(CLASSES) + 1
    results: dict = {"scenes": args.scenes, "held_out_seed": EVAL_SEED}
    for variant in ("value", "last"):
        models = FmbsegModels(clip, get_spec("clip:toy"), embedder, None, None, CLASSES,
                              FmbsegSettings(clip_variant=variant))
        correct = total = tp = fp = fn = 0
        for sc in scenes:
            cmap, crop_cls = models.clip_map(sc.image)
            nearest = (cmap.reshape(-1, cmap.shape[-1]) @ models.text.T).argmax(1).numpy()
            target = patch_targets(sc.semantic, cmap.shape[0], len(CLASSES))
            obj = target > 0
            correct += int((nearest[obj] == target[obj] - 1).sum())
            total += int(obj.sum())
            found, truth = set(detected_classes(models, crop_cls, None)), {int(c) - 1 for c in sc.classes}
            tp, fp, fn = tp + len(found & truth), fp + len(found - truth), fn + len(truth - found)
        results[f"clip_{variant}_patch_accuracy"] = correct / max(total, 1)
        results[f"clip_{variant}_presence_precision"] = tp / max(tp + fp, 1)
        results[f"clip_{variant}_presence_recall"] = tp / max(tp + fn, 1)

    models = FmbsegModels(clip, get_spec("clip:toy"), embedder, None, None, CLASSES,
                          FmbsegSettings(pred_iou_thresh=args.pred_iou))
    for mode in ("clip", "labels"):
        cms = {share: np.zeros((k, k), np.int64) for share in (0.0, 0.75, 1.0)}
        for i, sc in enumerate(scenes):
            padded, size = prepare_image(sc.image, embedder.image_size)
            labels = [CLASSES[int(c) - 1] for c in sc.classes] if mode == "labels" else None
            (ms, _), = pseudo_label(models, padded[None], [ImageInput(sc.image, sc.image.shape[:2], labels)], [size])
            is11 = np.asarray(ms.data["stage"]) == STAGE_11
            for share, cm in cms.items():
                keep = is11.copy()
                keep[~is11] = stage12_sample(f"scene{i}", int((~is11).sum()), share, 0)
                cm += confusion_matrix(sc.semantic, pseudo_label_map(ms, keep, *sc.semantic.shape), k)
        for share, cm in cms.items():
            results[f"stage1_{mode}_1.1+{int(share * 100)}%_1.2_miou"] = 100 * float(np.mean(scores_from_confusion(cm).iou))
    print_results(results, args.json)


if __name__ == "__main__":
    main()
