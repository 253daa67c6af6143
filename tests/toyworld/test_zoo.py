"""The shipped toy zoo loads through the registry and beats measured floors on fresh scenes;
a shortened training run shows every loss falling."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from usam_ray.cli import app
from usam_ray.models.registry import resolve, shipped_zoo
from usam_ray.toyworld.zoo import TrainSettings, redistil_dino, train_zoo

# Floors, set from what the shipped zoo measured on 200 held-out scenes (see quality.json and the
# README) with a margin; never lowered to make a test pass.
SAM_IOU_FLOOR = 0.70  # measured 0.749
CLIP_ACCURACY_FLOOR = 0.60  # measured 0.732 (chance 0.2)
# measured 0.600 on 200 held-out scenes, 0.588 on this test's 120 (class-balanced probe); before the colour-blind
# distillation 0.549, the SAM-only one 0.392; chance 0.167
DINO_BALANCED_FLOOR = 0.55
SAM_BOX_FLOOR = 0.60  # measured 0.672 (box + points, UO-SAM's first pass); 0.661 with the mask prompt


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


@pytest.mark.slow
def test_dino_only_run_keeps_the_source_sam_and_clip_and_writes_a_loadable_zoo(tmp_path):
    """`toy train-zoo --dino-only`: the SAM and CLIP files are the source's byte for byte, the new
    DINOv2 loads through the registry from the new folder, its loss fell, its figures are new."""
    from usam_ray.models.dino import load_dino
    from usam_ray.models.registry import get_spec

    source = shipped_zoo()
    q = redistil_dino(source, tmp_path / "zoo", TrainSettings.quick(), log=lambda _l: None, eval_scenes=10)
    for name in ("sam:toy", "clip:toy"):
        local = get_spec(name).local_name
        files = [p.relative_to(source) for p in (source / local).rglob("*")] if (source / local).is_dir() else [Path(local)]
        for f in files:
            if (source / f).is_file():
                assert (tmp_path / "zoo" / f).read_bytes() == (source / f).read_bytes(), f
    dino = resolve("dino:toy", tmp_path / "zoo")
    assert dino.location.startswith(str(tmp_path))
    assert load_dino(dino).model.config.hidden_size > 0
    first, last = q["loss_first_last"]["dino"]
    assert last < 0.9 * first
    assert q["held_out_scenes"] == 10 and q["settings"]["dino_steps"] == TrainSettings.quick().dino_steps
    with pytest.raises(ValueError, match="elsewhere"):
        redistil_dino(tmp_path / "zoo", tmp_path / "zoo", TrainSettings.quick(), log=lambda _l: None)
