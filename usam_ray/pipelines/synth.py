"""Synthetic training images per class, as Parquet image shards with labels (``RUN/synth``).

Sources: ``diffusion`` (any diffusers text-to-image model, prompt template "a photo of a {c}",
an actor pool on GPUs when present), ``toy`` (the toy world's single-object scenes, CPU tasks),
and ``folder`` (class-per-folder web images: nothing to generate, embed reads ``classes:DIR``).
Every image's seed derives from (class, index), so a re-run reproduces it; images already in a
shard are skipped, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.schema import IMAGES_SCHEMA, shard_metadata
from ..data.shards import list_shards, read_column, remove_temp_files, shard_name, write_shard

STAGE = "synth"


def item_seed(cls: str, index: int, base: int = 0) -> int:
    """The seed of image ``index`` of class ``cls``: stable across runs, machines and orderings."""
    return int(hashlib.sha256(f"{base}:{cls}:{index}".encode()).hexdigest()[:8], 16)


def image_id(cls: str, index: int) -> str:
    return f"{cls}/{index:05d}"


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def toy_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray Data task: (class, index, seed) rows → toy single-object PNGs."""
    from ..data.toyscenes import CLASSES, single_object

    images = []
    for cls, seed in zip(batch["cls"], batch["seed"]):
        # objects from small to large, as a photo of one object may show it at any scale
        sc = single_object(np.random.default_rng(int(seed)), size, cls=CLASSES.index(str(cls)) + 1,
                           scale=(0.1, 0.36))
        images.append(_png(sc.image))
    out = np.empty(len(images), dtype=object)
    out[:] = images
    return {"image_id": batch["image_id"], "cls": batch["cls"], "image": out}


class DiffusionStage:
    """Actor stage: prompts → images with a diffusers pipeline loaded once per actor.

    Args:
        resolved (ResolvedModel): the ``diffusion:`` model.
        template (str): prompt template with ``{c}``.
        steps (int), guidance (float), size (int): sampling settings.
        device (str): torch device.
    """

    def __init__(self, resolved, template: str, steps: int, guidance: float, size: int, device: str) -> None:
        import torch

        from ..models.diffusion import load_diffusion

        dtype = torch.float16 if device == "cuda" else None
        self.pipe = load_diffusion(resolved, torch_dtype=dtype).to(device)
        self.template, self.steps, self.guidance, self.size, self.device = template, steps, guidance, size, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        prompts = [self.template.format(c=str(c)) for c in batch["cls"]]
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in batch["seed"]]
        result = self.pipe(prompts, num_inference_steps=self.steps, guidance_scale=self.guidance, height=self.size,
                           width=self.size, generator=gens, output_type="np")
        imgs = (np.clip(result.images, 0, 1) * 255).round().astype(np.uint8)
        out = np.empty(len(imgs), dtype=object)
        out[:] = [_png(i) for i in imgs]
        return {"image_id": batch["image_id"], "cls": batch["cls"], "image": out}


def write_image_shard(batch: dict[str, np.ndarray], out_dir: str, fingerprint: str,
                      models: dict[str, str]) -> dict[str, np.ndarray]:
    """Ray Data task (the sink): a batch of generated images → one Parquet image shard
    (IMAGES_SCHEMA), atomically; returns ``rows`` (1,)."""
    import pyarrow as pa

    ids = [str(i) for i in batch["image_id"]]
    table = pa.table({"image_id": ids, "image": [bytes(b) for b in batch["image"]],
                      "labels": [[str(c)] for c in batch["cls"]]}, schema=IMAGES_SCHEMA)
    write_shard(table, Path(out_dir) / shard_name(ids), shard_metadata("images", fingerprint, models))
    return {"rows": np.array([len(ids)])}


def _check_loadable(resolved) -> None:
    """Read the pipeline's config on the driver, so a model that cannot be found fails before Ray
    work starts (offline hub ids, incomplete folders)."""
    from diffusers import DiffusionPipeline

    from ..models._hf import from_pretrained

    from_pretrained(DiffusionPipeline.load_config, resolved)


def run_synth(cfg, log: Callable[[str], None] = print) -> dict:
    """Generate ``cfg.synth.per_class`` images per class of ``cfg.classes`` into ``cfg.out`` (Parquet
    image shards), resuming.

    Args:
        cfg (SynthConfig): classes, out, the synth section and the runtime section.

    Returns:
        {"generated": n, "already": n, "total": n, "fingerprint": fp, "shards": n, "seconds": s}.
    """
    import ray.data

    from ..config import stable_hash
    from ..models.registry import models_dir_from_env, resolve_default
    from ..progress import Progress
    from ..types import Ontology
    from ..runtime import init_ray, plan_model_pool, quiet_ray_data, rows_until_stalled

    start = time.time()
    if cfg.classes is None or cfg.out is None:
        raise ValueError("synth needs --classes and --out")
    classes = list(Ontology.from_names(cfg.classes).classes)
    s, runtime = cfg.synth, cfg.runtime
    source, per_class, template, steps, guidance, size, seed = (s.source, s.per_class, s.template, s.steps, s.guidance,
                                                                 s.size, s.seed)
    models: dict[str, str] = {}
    resolved = None
    if source == "toy":
        from ..data.toyscenes import CLASSES

        unknown = [c for c in classes if c not in CLASSES]
        if unknown:
            raise ValueError(f"the toy world has no classes {unknown}; it has {list(CLASSES)}")
    elif source == "diffusion":
        resolved = resolve_default("diffusion", s.model, models_dir_from_env(runtime.models_dir))
        _check_loadable(resolved)
        models = {resolved.spec.name: resolved.fingerprint()}
    else:
        raise ValueError(f"synth source {source!r}: use toy or diffusion (folder needs no generation)")
    fingerprint = stable_hash({"stage": STAGE, "source": source, "template": template, "steps": steps,
                               "guidance": guidance, "size": size, "seed": seed, "models": models})
    out = Path(cfg.out)
    batch_size, shard_size = runtime.batch_size, runtime.shard_size
    remove_temp_files(out)
    from ..data.shards import check_fingerprints

    check_fingerprints([out], fingerprint, STAGE)
    done = set(read_column(out, "image_id"))
    items = [{"image_id": image_id(c, i), "cls": c, "seed": item_seed(c, i, seed)}
             for c in classes for i in range(per_class) if image_id(c, i) not in done]
    log(f"synth: {len(classes)} classes × {per_class} {source} images; {len(done)} already in {out}, "
        f"{len(items)} to generate")
    if items:
        resources = init_ray(runtime.address, log)
        quiet_ray_data()
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), len(items) // batch_size)))
        if source == "toy":
            ds = ds.map_batches(toy_batch, batch_size=batch_size, fn_kwargs={"size": size}, num_cpus=1)
        else:
            pool = plan_model_pool(runtime, resources)
            ds = ds.map_batches(DiffusionStage, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=pool.size),
                                num_cpus=pool.num_cpus, num_gpus=pool.num_gpus,
                                fn_constructor_kwargs={"resolved": resolved, "template": template, "steps": steps,
                                                       "guidance": guidance, "size": size, "device": pool.device})
        ds = ds.map_batches(write_image_shard, batch_size=shard_size, num_cpus=0.25,
                            fn_kwargs={"out_dir": str(out), "fingerprint": fingerprint, "models": models})
        with Progress("synth", len(items), "images", log) as progress:
            for row in rows_until_stalled(ds.iter_rows(), cfg.runtime.stall_timeout_s, "synth", log):
                progress.update(int(row["rows"]))
    total = len(read_column(out, "image_id"))
    return {"generated": len(items), "already": len(done), "total": total, "fingerprint": fingerprint,
            "shards": len(list_shards(out)), "seconds": round(time.time() - start, 1)}
