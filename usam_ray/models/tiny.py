"""Random tiny versions of every model family, written in the real on-disk formats.

``write_tiny_zoo(DIR)`` writes, under the registry's local names:

- ``sam_tiny.pth`` + ``sam_tiny.json``: a segment_anything state dict and its architecture;
- ``clip-tiny/``: ``CLIPModel.save_pretrained`` + a locally built byte-level ``CLIPTokenizer``
  + ``CLIPImageProcessor``;
- ``dinov2-tiny/``: ``Dinov2Model.save_pretrained`` + ``BitImageProcessor``;
- ``sd-tiny/``: ``StableDiffusionPipeline.save_pretrained`` (tiny UNet, VAE, CLIP text encoder, DDIM);
- ``usam-ray-models.json``: declares these as the folder's default models.

The same loaders that read real checkpoints read these; the weights are random (seeded), so
they test plumbing, not quality (the toy world's trained zoo is for quality).
"""

from __future__ import annotations

import json
from pathlib import Path

from .registry import MANIFEST, get_spec

TINY_SAM_ARCH = {
    "img_size": 256, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2, "window_size": 4,
    "global_attn_indexes": [1], "prompt_embed_dim": 64, "decoder_depth": 2, "decoder_mlp_dim": 128,
    "decoder_heads": 2, "iou_head_hidden_dim": 64,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table (256 entries)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def byte_level_vocab() -> tuple[dict[str, int], list[str]]:
    """A CLIP BPE vocabulary of the 256 byte symbols, their ``</w>`` forms and the two specials.

    Returns:
        (vocab, merges): token → id (514 entries) and an empty merges list (no merges needed:
        every word tokenizes to bytes, the last one carrying ``</w>``).
    """
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, []


def build_tokenizer(max_length: int = 77):
    """A tiny ``transformers.CLIPTokenizer`` built from ``byte_level_vocab`` (no download)."""
    from transformers import CLIPTokenizer

    vocab, merges = byte_level_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def write_tiny_sam(out: Path, seed: int = 0) -> Path:
    """Write a random tiny SAM as ``out/sam_tiny.pth`` (+ ``.json`` architecture)."""
    import torch

    from .sam import build_sam, save_sam

    torch.manual_seed(seed)
    sam = build_sam(TINY_SAM_ARCH)
    path = out / get_spec("sam:tiny").local_name
    save_sam(sam, TINY_SAM_ARCH, path, {"note": "random weights, written by usam-ray models tiny", "seed": seed})
    return path


def _tiny_clip_config(max_length: int = 77):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    vocab, _ = byte_level_vocab()
    text = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=max_length, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"], projection_dim=32,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=32,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)


def write_tiny_clip(out: Path, seed: int = 0) -> Path:
    """Write a random tiny CLIP folder (model, tokenizer, image processor) as ``out/clip-tiny``."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    path = out / get_spec("clip:tiny").local_name
    CLIPModel(_tiny_clip_config()).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def write_tiny_dino(out: Path, seed: int = 0) -> Path:
    """Write a random tiny DINOv2 folder (model, image processor) as ``out/dinov2-tiny``."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    path = out / get_spec("dino:tiny").local_name
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          patch_size=8, image_size=56)
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, do_center_crop=True,
        image_mean=list(get_spec("dino:tiny").mean), image_std=list(get_spec("dino:tiny").std),
    ).save_pretrained(path)
    return path


def _sd_pipeline(text_config, unet: dict, vae: dict, scheduler):
    """A Stable Diffusion pipeline of random weights with the locally built tokenizer."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    return StableDiffusionPipeline(
        vae=AutoencoderKL(**vae), text_encoder=CLIPTextModel(text_config), tokenizer=build_tokenizer(),
        unet=UNet2DConditionModel(**unet), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def write_tiny_diffusion(out: Path, seed: int = 0) -> Path:
    """Write a random tiny Stable Diffusion pipeline folder as ``out/sd-tiny`` (32×32 images)."""
    import torch
    from diffusers import DDIMScheduler

    torch.manual_seed(seed)
    pipe = _sd_pipeline(
        _tiny_clip_config().text_config,
        unet=dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
                  norm_num_groups=16),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                 down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                 up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=16, sample_size=32),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
    )
    path = out / get_spec("diffusion:tiny").local_name
    pipe.save_pretrained(path)
    return path


def _clip_l14_text_config():
    """CLIP ViT-L/14's text tower (Stable Diffusion v1's text encoder too), with the local
    byte-level tokenizer's special ids."""
    from transformers import CLIPTextConfig

    vocab, _ = byte_level_vocab()
    return CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                          bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                          pad_token_id=vocab["<|endoftext|>"], projection_dim=768)


def write_random_full_size(name: str, out: Path, seed: int = 0) -> Path:
    """Write random weights of a *real* architecture, in its real on-disk format, for speed
    measurements (random weights cost exactly what trained ones do): ``sam:vit_h|vit_l|vit_b``
    (a segment_anything state dict under the official file name),
    ``clip:openai/clip-vit-large-patch14-336`` and ``dino:facebook/dinov2-large`` (FMbSeg's
    paper models, transformers folders; CLIP's tokenizer is the local byte-level one) or
    ``diffusion:CompVis/stable-diffusion-v1-4`` (its UNet / VAE / CLIP ViT-L/14 text encoder
    configs and PNDM scheduler, as a diffusers folder; the tokenizer is the local byte-level one).

    Raises:
        KeyError: a model with no full-size recipe here.
    """
    import torch

    spec = get_spec(name)
    torch.manual_seed(seed)
    path = Path(out) / spec.local_name
    if spec.family == "sam" and spec.arch:
        from .sam import build_sam

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(build_sam(spec.arch).state_dict(), path)
        return path
    if name == "diffusion:CompVis/stable-diffusion-v1-4":
        from diffusers import PNDMScheduler

        text = _clip_l14_text_config()
        pipe = _sd_pipeline(
            text,
            unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                      block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                      down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
            vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                     block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4),
            scheduler=PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
        )
        pipe.save_pretrained(path)
        return path
    if name == "clip:openai/clip-vit-large-patch14-336":
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig

        text = _clip_l14_text_config()
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  image_size=336, patch_size=14, hidden_act="quick_gelu", projection_dim=768)
        CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=768)
                  ).save_pretrained(path)
        build_tokenizer().save_pretrained(path)
        CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                           image_mean=list(spec.mean), image_std=list(spec.std)).save_pretrained(path)
        return path
    if name == "dino:facebook/dinov2-large":
        from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

        Dinov2Model(Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
                                 patch_size=14, image_size=518)).save_pretrained(path)
        BitImageProcessor(size={"shortest_edge": 518}, crop_size={"height": 518, "width": 518}, do_center_crop=True,
                          image_mean=list(spec.mean), image_std=list(spec.std)).save_pretrained(path)
        return path
    raise KeyError(f"no full-size random recipe for {name}")


def write_tiny_zoo(out: Path, seed: int = 0) -> dict[str, Path]:
    """Write all four tiny families into ``out`` and declare them its defaults.

    Returns:
        registry name → written path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "sam:tiny": write_tiny_sam(out, seed),
        "clip:tiny": write_tiny_clip(out, seed),
        "dino:tiny": write_tiny_dino(out, seed),
        "diffusion:tiny": write_tiny_diffusion(out, seed),
    }
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    defaults = manifest.setdefault("defaults", {})
    for name in written:
        defaults.setdefault(name.split(":")[0], name)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return written
