"""FMbSeg end to end on held-out toy scenes with the shipped toy zoo, through the real pipelines
(Ray Data pseudo and label stages, Ray Train alignment), and its throughput on this machine.

Quality (mIoU over background + 5 classes, in %, on ``--scenes`` toy scenes of seed 2,000,000,
which no training uses; FMbSeg pseudo-labels the scenes themselves — no label is read — then
labels them):

- Stage 1 as labels: 1.1 only, 1.1 + 75 % of 1.2, 1.1 + 100 % of 1.2;
- Stage 2 base trained on each of those three (the paper's Table 2 balance), block module;
- the module ablation (linear / MLP / block) at 75 %;
- refined (SAM's automatic masks vote) for each module at 75 %.

Throughput: images/s of ``pseudo`` and of ``label --method fmbseg`` (base and refined) in the
same invocation; with ``--real N`` also on N images of 375×500 with random-weight CLIP
ViT-L/14-336, DINOv2 ViT-L/14 (518²) and SAM ViT-H (the paper's models) on this CPU.

    python bench/fmbseg.py [--scenes 60] [--loss tsupcon_balanced] [--temperature 0.2] [--real 2 [--real-only]] [--json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _report import print_results

QUIET = lambda _l: None  # noqa: E731


def _label(images, head, out, refined, common, models=None):
    from usam_ray.config import LabelConfig, load_config
    from usam_ray.pipelines.label_fmbseg import run_label_fmbseg

    extra = [f"runtime.models_dir={models}"] if models else []
    cfg = load_config(LabelConfig, None, [f"images={images}", f"head={head}", "method=fmbseg",
                                          f"refined={str(refined).lower()}", f"out={out}", *common, *extra])
    start = time.time()
    summary = run_label_fmbseg(cfg, log=QUIET)
    return summary, time.time() - start


def _miou(labels, gt_root) -> float:
    from usam_ray.config import EvalConfig
    from usam_ray.eval.evaluate import run_eval

    report = run_eval(EvalConfig(labels=labels, gt=f"folder:{gt_root}", out=Path(labels).parent / "eval",
                                 parallel=False), log=QUIET)
    return round(100 * report["semantic"]["miou"], 2)


def quality(work: Path, scenes: int, loss: str, temperature: float) -> dict:
    from usam_ray.config import PseudoConfig, TrainAlignConfig, load_config
    from usam_ray.data.toyscenes import CLASSES, write_scene_dataset
    from usam_ray.pipelines.pseudo import run_pseudo, write_stage1_labels
    from usam_ray.toyworld.common import EVAL_SEED
    from usam_ray.train.align import train_align

    root = write_scene_dataset(work / "scenes", scenes, seed=EVAL_SEED)
    images, run = root / "images", work / "run"
    common = ["sam.model=sam:toy", "sam.points_per_side=10", "runtime.progress=false"]
    start = time.time()
    pseudo = run_pseudo(load_config(PseudoConfig, None, [
        f"images={images}", f"out={run / 'pseudo'}", f"classes={', '.join(CLASSES)}", "clip_model=clip:toy",
        "dino_model=dino:toy", "fmbseg.pred_iou_thresh=0.8", *common]), log=QUIET)
    out: dict = {"scenes": scenes, "held_out_seed": EVAL_SEED, "loss": loss, "temperature": temperature,
                 "pseudo_images_per_s": round(pseudo.labelled /
                                                                                             (time.time() - start), 2)}
    for name, fraction in (("1.1", 0.0), ("1.1+75%", 0.75), ("1.1+100%", 1.0)):
        write_stage1_labels(run / "pseudo", work / f"stage1-{name}" / "labels", list(CLASSES), fraction, 0)
        out[f"stage1 {name}"] = _miou(work / f"stage1-{name}" / "labels", root)
    runs = [("block", 0.0), ("block", 0.75), ("block", 1.0), ("linear", 0.75), ("mlp", 0.75)]
    for kind, fraction in runs:
        head = work / f"align-{kind}-{fraction}"
        summary = train_align(load_config(TrainAlignConfig, None, [
            f"pseudo={run / 'pseudo'}", f"out={head}", f"kind={kind}", f"fmbseg.stage12_fraction={fraction}",
            f"loss={loss}", f"temperature={temperature}", "runtime.progress=false"]), log=QUIET)
        base, seconds = _label(images, head, head / "base" / "labels", False, common)
        out[f"stage2 base {kind} {fraction:.0%} of 1.2"] = _miou(head / "base" / "labels", root)
        out[f"stage2 {kind} {fraction:.0%} val patch accuracy"] = round(summary["best"]["val_patch_accuracy"], 3)
        if fraction == 0.75:
            out[f"label base {kind} images_per_s"] = round(base.images / seconds, 2)
            refined, seconds = _label(images, head, head / "refined" / "labels", True, common)
            out[f"label refined {kind} images_per_s"] = round(refined.images / seconds, 2)
            out[f"stage2 refined {kind} {fraction:.0%} of 1.2"] = _miou(head / "refined" / "labels", root)
    return out


def real_throughput(work: Path, n: int) -> dict:
    """Pseudo and label img/s with the paper's architectures (random weights) on this machine."""
    from usam_ray.config import PseudoConfig, TrainAlignConfig, load_config
    from usam_ray.data.samples import write_sample_images
    from usam_ray.models.tiny import write_random_full_size
    from usam_ray.pipelines.pseudo import run_pseudo
    from usam_ray.train.align import train_align

    models = work / "models"
    names = ("sam:vit_h", "clip:openai/clip-vit-large-patch14-336", "dino:facebook/dinov2-large")
    for name in names:
        write_random_full_size(name, models)
    write_sample_images(work / "real", n, seed=3, min_side=375, max_side=500, shape=(375, 500))
    common = ["sam.model=sam:vit_h", "sam.points_per_side=32", "runtime.batch_size=1", "runtime.progress=false",
              f"runtime.models_dir={models}"]
    start = time.time()
    run_pseudo(load_config(PseudoConfig, None, [
        f"images={work / 'real'}", f"out={work / 'realrun' / 'pseudo'}", "classes=person, dog, car",
        f"clip_model={names[1]}", f"dino_model={names[2]}", *common]), log=QUIET)
    pseudo_s = time.time() - start
    train_align(load_config(TrainAlignConfig, None, [f"pseudo={work / 'realrun' / 'pseudo'}",
                                                     f"out={work / 'realrun' / 'align'}", "epochs=1", "heads=8",
                                                     "runtime.progress=false", f"runtime.models_dir={models}"]), log=QUIET)
    _, base_s = _label(work / "real", work / "realrun" / "align", work / "realrun" / "base", False, common, models)
    _, refined_s = _label(work / "real", work / "realrun" / "align", work / "realrun" / "refined", True, common, models)
    return {"real images": n, "real pseudo s/img": round(pseudo_s / n, 1), "real label base s/img": round(base_s / n, 1),
            "real label refined s/img": round(refined_s / n, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--real", type=int, default=0, help="also time N images with the paper's architectures")
    parser.add_argument("--real-only", action="store_true", help="skip the toy-world part")
    parser.add_argument("--loss", default="tsupcon_balanced", choices=["tsupcon", "tsupcon_balanced"],
                        help="Stage 2 loss (default: the demo's; tsupcon: the paper's form, which collapses here)")
    parser.add_argument("--temperature", type=float, default=0.2, help="TSupCon τ (default: the demo's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        results = {} if args.real_only else quality(Path(d), args.scenes, args.loss, args.temperature)
        if args.real:
            results.update(real_throughput(Path(d), args.real))
    print_results(results, args.json)


if __name__ == "__main__":
    main()
