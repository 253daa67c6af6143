"""The shipped toy zoo loads through the registry and beats measured floors on fresh scenes;
a shortened training run shows every loss falling."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from usam_ray.cli import app
from usam_ray.models.registry import resolve, shipped_zoo
from usam_ray.toyworld.zoo import TrainSettings, redistil_dino, refinetune_clip_dense, train_zoo

# Floors, set from what the shipped zoo measured on 200 held-out scenes (see quality.json and the
# README) with a margin; never lowered to make a test pass.
SAM_IOU_FLOOR = 0.70  # measured 0.749
CLIP_ACCURACY_FLOOR = 0.60  # measured 0.712 (chance 0.2; 0.732 before the crop-level fine-tune)
# measured 0.600 on 200 held-out scenes, 0.588 on this test's 120 (class-balanced probe); before the colour-blind
# distillation 0.549, the SAM-only one 0.392; chance 0.167
DINO_BALANCED_FLOOR = 0.55
SAM_BOX_FLOOR = 0.60  # measured 0.672 (box + points, UO-SAM's first pass); 0.661 with the mask prompt
# what FMbSeg's Stage 1 reads from the toy CLIP (16 crops of a scene): measured on 200 held-out scenes balanced patch
# accuracy 0.433 (0.446 on this test's 120; chance 0.167), class-presence recall 0.728 (0.751), precision 0.517 (0.538);
# the CLIP before its crop-level fine-tune: 0.404 and 0.567 / 0.476
CLIP_DENSE_FLOOR = 0.40
CLIP_PRESENCE_RECALL_FLOOR = 0.65


def test_shipped_zoo_resolves_without_a_models_folder():
    for name in ("sam:toy", "clip:toy", "dino:toy"):
        r = resolve(name, None)
        assert r.local and str(shipped_zoo()) in r.location


@pytest.mark.slow
def test_shipped_zoo_beats_floors_on_fresh_held_out_scenes():
    result = CliRunner().invoke(app, ["toy", "check", "--json", "--scenes", "120"])
    assert result.exit_code == 0, result.output
    q = json.loads(result.stdout.strip().splitlines()[-1])
    assert q["sam_mean_iou"] > SAM_IOU_FLOOR
    assert q["sam_box_points_iou"] > SAM_BOX_FLOOR and q["sam_mask_prompt_iou"] > SAM_BOX_FLOOR
    assert q["clip_zero_shot_accuracy"] > CLIP_ACCURACY_FLOOR
    assert q["clip_dense_balanced_accuracy"] > CLIP_DENSE_FLOOR
    assert q["clip_presence_recall"] > CLIP_PRESENCE_RECALL_FLOOR and q["clip_presence_precision"] > 0.45
    assert q["dino_probe_balanced_accuracy"] > DINO_BALANCED_FLOOR


@pytest.mark.slow
def test_short_training_run_lowers_every_loss(tmp_path):
    q = train_zoo(tmp_path / "zoo", TrainSettings.quick(), log=lambda _l: None, eval_scenes=10)
    for name, (first, last) in q["loss_first_last"].items():
        if name == "sam_prompts":  # a 40-step SAM's decoder knows too little to learn prompts for (below)
            continue
        assert last < 0.9 * first, f"{name} loss did not fall: {first:.3f} -> {last:.3f}"
    # what it wrote loads through the real loaders
    assert resolve("sam:toy", tmp_path / "zoo").location.startswith(str(tmp_path))
    assert (tmp_path / "zoo" / "clip-toy" / "config.json").is_file()


def test_toy_cli_writes_scenes_and_objects(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["toy", "scenes", str(tmp_path / "gt"), "--n", "3", "--seed", "4"])
    assert r.exit_code == 0 and "folder:" in r.output
    assert len(list((tmp_path / "gt" / "masks").glob("*.png"))) == 3
    r = runner.invoke(app, ["toy", "objects", str(tmp_path / "obj"), "--per-class", "1"])
    assert r.exit_code == 0 and len(list((tmp_path / "obj").rglob("*.png"))) == 5


@pytest.mark.slow
def test_prompt_finetune_learns_boxes_without_touching_points():
    """The shipped SAM with its box, negative-point and mask-prompt parameters reset to a fresh
    SAM's: 40 steps of ``finetune_sam_prompts`` lower the loss, and point prompts decode as before."""
    import torch

    from usam_ray.models.sam import build_sam, load_sam
    from usam_ray.toyworld.common import TRAIN_SEED, scene_pool
    from usam_ray.toyworld.toy_sam import PROMPT_ONLY_PARAMETERS, TOY_SAM_ARCH, finetune_sam_prompts

    sam = load_sam(resolve("sam:toy", None))
    fresh = dict(build_sam(TOY_SAM_ARCH).named_parameters())
    with torch.no_grad():
        for n, p in sam.named_parameters():
            if n.startswith(PROMPT_ONLY_PARAMETERS):
                p.copy_(fresh[n])
    frozen = {n: p.detach().clone() for n, p in sam.named_parameters() if not n.startswith(PROMPT_ONLY_PARAMETERS)}
    sam, losses = finetune_sam_prompts(sam, scene_pool(20, TRAIN_SEED), 40, 4, 4, 3e-3, 0, log=lambda _l: None)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    print(f"prompt fine-tune loss {first:.3f} -> {last:.3f}")
    assert last < 0.85 * first, (first, last)
    assert all(torch.equal(p, frozen[n]) for n, p in sam.named_parameters() if n in frozen)


def _same_files(a: Path, b: Path, name: str) -> bool:
    """Whether model ``name``'s files in zoo ``b`` are those of zoo ``a`` byte for byte."""
    from usam_ray.models.registry import get_spec

    local = get_spec(name).local_name
    files = [p.relative_to(a) for p in (a / local).rglob("*")] if (a / local).is_dir() else [Path(local)]
    return all((b / f).read_bytes() == (a / f).read_bytes() for f in files if (a / f).is_file())


@pytest.mark.slow
def test_one_step_runs_keep_the_other_models_and_chain(tmp_path):
    """`toy train-zoo --clip-dense-only`, then `--dino-only --from` its output (the order
    `train_zoo` runs them in): each keeps the other models byte for byte, changes its own, which
    loads through the registry from the new folder, its loss fell and its figures are new."""
    from usam_ray.models.dino import load_dino

    source, quick = shipped_zoo(), TrainSettings.quick()
    q = refinetune_clip_dense(source, tmp_path / "clip", quick, log=lambda _l: None, eval_scenes=10)
    assert _same_files(source, tmp_path / "clip", "sam:toy") and _same_files(source, tmp_path / "clip", "dino:toy")
    assert not _same_files(source, tmp_path / "clip", "clip:toy")
    first, last = q["loss_first_last"]["clip_dense"]
    assert last < 0.9 * first
    assert q["settings"]["clip_dense_steps"] == quick.clip_dense_steps and q["held_out_scenes"] == 10
    assert 0 <= q["clip_presence_precision"] <= 1 and "--clip-dense-only" in q["clip_dense_retrain"]["note"]

    clip_curve = q["loss_first_last"]["clip_dense"]
    q = redistil_dino(tmp_path / "clip", tmp_path / "zoo", quick, log=lambda _l: None, eval_scenes=10)
    assert _same_files(tmp_path / "clip", tmp_path / "zoo", "sam:toy")
    assert _same_files(tmp_path / "clip", tmp_path / "zoo", "clip:toy")
    assert not _same_files(source, tmp_path / "zoo", "dino:toy")
    dino = resolve("dino:toy", tmp_path / "zoo")
    assert dino.location.startswith(str(tmp_path))
    assert load_dino(dino).model.config.hidden_size > 0
    first, last = q["loss_first_last"]["dino"]
    assert last < 0.9 * first
    assert q["settings"]["dino_steps"] == quick.dino_steps
    assert q["loss_first_last"]["clip_dense"] == clip_curve  # the source's curve kept
    assert str(tmp_path / "clip") in q["dino_retrain"]["note"]
    with pytest.raises(ValueError, match="elsewhere"):
        redistil_dino(tmp_path / "zoo", tmp_path / "zoo", quick, log=lambda _l: None)


def test_train_zoo_refuses_options_that_do_not_go_together(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["toy", "train-zoo", "--dino-only", "--clip-dense-only", "--out", str(tmp_path / "z")])
    assert r.exit_code != 0 and "one step at a time" in r.output
    r = runner.invoke(app, ["toy", "train-zoo", "--from", str(shipped_zoo()), "--out", str(tmp_path / "z")])
    assert r.exit_code != 0 and "--from goes with" in r.output
    assert not (tmp_path / "z").exists()


def test_crop_class_is_the_crop_s_main_object_or_background():
    """Per crop: the object class with most patches when it holds >= 10 % of them, else 0."""
    import numpy as np

    from usam_ray.toyworld.toy_clip import crop_class

    t = np.zeros((4, 100), np.int64)
    t[0, :9] = 2  # 9 % of the crop: background
    t[1, :10] = 2  # 10 %: class 2
    t[2, :30], t[2, 30:50] = 1, 3  # class 1 beats class 3 (background, the most, never wins)
    t[3, :12], t[3, 12:24] = 4, 5  # a tie goes to the lower id
    assert crop_class(t).tolist() == [0, 2, 1, 4]
