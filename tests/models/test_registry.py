import json

import numpy as np
import pytest
import torch

from usam_ray.models.clip import load_clip
from usam_ray.models.diffusion import load_diffusion
from usam_ray.models.dino import load_dino
from usam_ray.models.registry import (
    MANIFEST, ModelNotFoundError, get_spec, list_specs, models_dir_from_env, resolve, resolve_default,
    weights_fingerprint,
)
from usam_ray.models.sam import CheckpointError, build_sam, load_sam
from usam_ray.models.tiny import TINY_SAM_ARCH


def test_official_sam_missing_names_the_download(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"dl\.fbaipublicfiles\.com/segment_anything/sam_vit_b_01ec64\.pth"):
        resolve("sam:vit_b", tmp_path)


def test_auto_prefers_manifest_then_largest_official(tmp_path, zoo):
    assert resolve_default("sam", "auto", zoo).spec.name == "sam:tiny"
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"x")
    (tmp_path / "sam_vit_l_0b3195.pth").write_bytes(b"x")
    assert resolve_default("sam", "auto", tmp_path).spec.name == "sam:vit_l"
    (tmp_path / MANIFEST).write_text(json.dumps({"defaults": {"sam": "sam:vit_b"}}))
    assert resolve_default("sam", "auto", tmp_path).spec.name == "sam:vit_b"


def test_auto_with_nothing_is_clear(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no SAM checkpoint found"):
        resolve_default("sam", "auto", tmp_path)


def test_models_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("USAM_RAY_MODELS", str(tmp_path))
    assert models_dir_from_env(None) == tmp_path
    monkeypatch.setenv("USAM_RAY_MODELS", str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="missing"):
        models_dir_from_env(None)


def test_hub_names_fall_back_to_hub_id_or_local_folder(tmp_path):
    r = resolve("clip:openai/clip-vit-base-patch16", None)
    assert (r.location, r.local) == ("openai/clip-vit-base-patch16", False)
    (tmp_path / "openai--clip-vit-base-patch16").mkdir()
    r = resolve("clip:openai/clip-vit-base-patch16", tmp_path)
    assert r.local and r.location.endswith("openai--clip-vit-base-patch16")
    assert get_spec("dino:some/other").family == "dino"
    with pytest.raises(KeyError, match="sam:vit_x"):
        get_spec("sam:vit_x")


def test_every_registered_sam_arch_builds_a_consistent_network():
    # Build only the cheap ones fully; check the big archs' decoders and prompt encoders agree.
    for spec in list_specs():
        if spec.family == "sam" and spec.arch:
            assert spec.arch["img_size"] // spec.arch["patch_size"] == 64
    sam = build_sam(TINY_SAM_ARCH)
    assert sam.image_encoder.img_size == 256
    assert sam.mask_decoder.num_mask_tokens == 4


def test_load_sam_reports_wrong_checkpoints(tmp_path, zoo):
    good = resolve("sam:tiny", zoo)
    sam = load_sam(good)
    state = sam.state_dict()
    # missing keys → error naming them
    partial = {k: v for k, v in state.items() if not k.startswith("mask_decoder.iou")}
    bad = tmp_path / "sam_tiny.pth"
    torch.save(partial, bad)
    (tmp_path / "sam_tiny.json").write_text((zoo / "sam_tiny.json").read_text())
    with pytest.raises(CheckpointError, match="missing.*mask_decoder.iou"):
        load_sam(resolve("sam:tiny", tmp_path))
    # not a state dict at all
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_sam(resolve("sam:tiny", tmp_path))


def test_weights_fingerprint_changes_with_content(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 100)
    first = weights_fingerprint(f)
    f.write_bytes(b"a" * 99 + b"b")
    assert weights_fingerprint(f) != first


def test_a_folder_name_given_as_variant_loads_from_there(tmp_path, zoo, monkeypatch):
    r = resolve(f"clip:{zoo / 'clip-tiny'}", None)
    assert r.local and r.location == str(zoo / "clip-tiny")
    # a folder in the working directory that happens to share a local name is not picked up
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clip-tiny").mkdir()
    with pytest.raises(ModelNotFoundError):
        resolve("clip:tiny", None)


def _forward(spec, resolved) -> tuple:
    """Load ``resolved`` with its family's loader and run it on one blank input of the spec's size;
    returns the output's shape."""
    size = spec.input_size
    with torch.inference_mode():
        if spec.family == "sam":
            sam = load_sam(resolved)
            return tuple(sam.image_encoder(torch.zeros(1, 3, sam.image_encoder.img_size, sam.image_encoder.img_size)).shape)
        if spec.family == "clip":
            clip = load_clip(resolved)
            pixels = clip.processor(images=[np.zeros((size, size, 3), np.uint8)], return_tensors="pt")["pixel_values"]
            from usam_ray.models.clip import projected

            return tuple(projected(clip.model.get_image_features(pixel_values=pixels)).shape)
        if spec.family == "dino":
            dino = load_dino(resolved)
            pixels = dino.processor(images=[np.zeros((size, size, 3), np.uint8)], return_tensors="pt")["pixel_values"]
            return tuple(dino.model(pixel_values=pixels).last_hidden_state.shape)
        pipe = load_diffusion(resolved)
        return tuple(pipe(["x"], num_inference_steps=1, height=size, width=size, output_type="np").images.shape)


@pytest.mark.parametrize("name", [s.name for s in list_specs()])
def test_every_registered_model_loads_and_runs_or_says_where_to_get_it(name, zoo):
    """Tiny and toy models load through the real loaders and run; official and hub models, whose
    weights this machine cannot fetch, fail with an error naming the model and where to get it."""
    from usam_ray.models.registry import ModelNotFoundError, get_spec

    spec = get_spec(name)
    try:
        resolved = resolve(name, zoo)
        shape = _forward(spec, resolved)
    except ModelNotFoundError as exc:
        assert name in str(exc) or spec.source in str(exc), str(exc)
        assert spec.name.split(":")[0] in ("sam", "clip", "dino", "diffusion") and spec.source, spec
        return
    assert len(shape) >= 2 and shape[0] == 1
