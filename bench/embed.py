"""Embed (and label) throughput, in one invocation on the same images and the same SAM.

CPU mode (default; tiny random SAM, mixed image sizes):

1. the Ray Data embed pipeline (``run_embed``: read tasks → SAM actor pool → Parquet shards)
   vs the same ``SamMaskEmbedder`` called in a plain in-process loop (decode + embed, no writes);
2. our batched grid vs segment_anything's ``SamAutomaticMaskGenerator(points_per_side=10,
   crop_n_layers=0)`` — with its default filters, and with filters off so that it keeps every mask;
3. labelling from the stored embeddings (random head, score threshold 0 so every mask is a
   candidate: the most work labelling can have) vs the embed rate.

CUDA mode (``--device cuda``, e.g. ``--model sam:vit_h --random-weights --size 375x500``):

1. the card's bf16 matmul rate (8192³ products) and the encoder's FLOPs per image
   (``torch.utils.flop_counter``);
2. image-encoder img/s and share of that rate: fp32 as segment_anything runs it, bf16 + SDPA,
   and + ``torch.compile`` (``--compile``);
3. the embedder loop (encoder + decode + on-device post-processing + RLE) img/s;
4. the Ray pipeline img/s, steady state (after the first shard) and including start-up;
5. labelling from embeddings img/s.

Usage: python bench/embed.py [--n 200] [--device cpu|cuda] [--model sam:tiny] [--random-weights]
       [--size HxW] [--batch-size 4] [--compile] [--json]
Ratios > 1 mean the first of each pair is faster. Only ratios within one invocation are
meaningful on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _report import print_results


def _images(work: Path, n: int, size: str | None) -> list[Path]:
    """``n`` procedural sample images: mixed 96–320 px sides, or all of ``size`` ("375x500")."""
    from usam_ray.data.samples import write_sample_images

    if size is None:
        return write_sample_images(work / "images", n, seed=1)
    h, w = (int(v) for v in size.lower().split("x"))
    return write_sample_images(work / "images", n, seed=1, min_side=min(h, w), max_side=max(h, w), shape=(h, w))


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: str, n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 matmul rate in TFLOP/s (n³ products)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def encoder_flops(sam, device: str) -> float:
    """FLOPs of one image through SAM's image encoder."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, sam.image_encoder.img_size, sam.image_encoder.img_size, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        sam.image_encoder(x)
    return float(counter.get_total_flops())


def time_encoder(encoder, dtype, batch: int, size: int, device: str, reps: int) -> float:
    """img/s of ``encoder`` on zero images of ``size``², after a warm-up."""
    import torch

    x = torch.zeros(batch, 3, size, size, device=device, dtype=dtype)
    with torch.inference_mode():
        for _ in range(2):
            encoder(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            encoder(x)
        _sync(device)
    return batch * reps / (time.perf_counter() - start)


def embed_loop(embedder, paths: list[Path], batch: int, device: str) -> float:
    """img/s of a plain in-process loop: decode each file, ``embedder.embed`` in batches (host
    outputs included, nothing written)."""
    from usam_ray.data.decode import decode_image

    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        embedder.embed([decode_image(p.read_bytes(), str(p), 10**9) for p in paths[i : i + batch]])
    _sync(device)
    return len(paths) / (time.perf_counter() - start)


def ray_embed(cfg, n: int) -> dict:
    """Run the Ray embed graph; img/s including start-up, and steady (after the first shard)."""
    from usam_ray.pipelines.embed import build_embed_dataset, plan_embed

    start = time.perf_counter()
    plan = plan_embed(cfg)
    stamps, rows = [], []
    for row in build_embed_dataset(plan).iter_rows():
        stamps.append(time.perf_counter())
        rows.append(int(row["rows"]) + int(row["errors"]))
    assert sum(rows) == n, (sum(rows), n)
    total = stamps[-1] - start
    steady = (sum(rows) - rows[0]) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return {"ray_images_per_s": n / total, "ray_steady_images_per_s": steady, "ray_shards": len(rows)}


def label_rate(run: Path, models: dict, classes: int, token_dim: int, n: int, fingerprint: str) -> float:
    """img/s of `label --from-embeddings` with a random head and every mask a candidate."""
    import torch

    from usam_ray.config import LabelConfig
    from usam_ray.heads.mil import MaskClassifier
    from usam_ray.pipelines.label import run_label

    head = MaskClassifier(token_dim, classes)
    (run / "head").mkdir(parents=True, exist_ok=True)
    torch.save({"args": head.args, "state_dict": head.state_dict(), "classes": [f"c{i}" for i in range(classes)],
                "phase": "student", "epoch": 0, "metrics": {}, "embeddings": {"fingerprint": fingerprint,
                                                                             "models": models}},
               run / "head" / "best.pt")
    cfg = LabelConfig(embeddings=run / "embed", head=run / "head", out=run / "labels",
                      label={"score_threshold": 0.0}, runtime={"progress": False})
    start = time.perf_counter()
    summary = run_label(cfg, log=lambda _l: None)
    assert summary.images == n, summary
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of images")
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: a fresh one)")
    parser.add_argument("--model", default="sam:tiny")
    parser.add_argument("--random-weights", action="store_true",
                        help="write random weights of --model's real architecture into the models folder first")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default=None, help="fixed image size HxW (default: mixed 96–320 px)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=16, help="images per shard (the steady rate is "
                        "measured from the first shard's arrival, so smaller shards resolve it better)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (CUDA mode)")
    parser.add_argument("--actors-per-gpu", type=int, default=1)
    parser.add_argument("--skip-amg", action="store_true")
    parser.add_argument("--encoder", action="store_true",
                        help="also the encoder figures on CPU (always on with --device cuda; a 2048³ matmul here)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import torch

    from usam_ray.config import EmbedConfig, load_config
    from usam_ray.data.decode import decode_image
    from usam_ray.config import RuntimeConfig, SamConfig
    from usam_ray.methods.sam_embed import SamMaskEmbedder
    from usam_ray.models import resolve
    from usam_ray.models.sam import load_sam
    from usam_ray.models.sam_fast import resolve_precision
    from usam_ray.models.tiny import write_random_full_size, write_tiny_zoo
    from usam_ray.runtime import init_ray

    work = Path(tempfile.mkdtemp(prefix="usam-bench-"))
    zoo = args.models or work / "zoo"
    if args.models is None:
        write_tiny_zoo(zoo)
    if args.random_weights:
        write_random_full_size(args.model, zoo)
    paths = _images(work, args.n, args.size)
    images = [decode_image(p.read_bytes(), str(p), 10**9) for p in paths]
    dev = args.device
    results: dict = {"images": args.n, "model": args.model, "device": dev, "size": args.size or "96-320 mixed",
                     "batch_size": args.batch_size, "torch": torch.__version__}
    settings = SamConfig(points_per_side=10, precision=args.precision, compile=args.compile and dev == "cuda")
    runtime = RuntimeConfig(batch_size=args.batch_size)

    if dev == "cuda" or args.encoder:
        results["gpu"] = torch.cuda.get_device_name() if dev == "cuda" else "none (CPU)"
        rate = matmul_rate(dev) if dev == "cuda" else matmul_rate(dev, n=2048, reps=3)
        results["bf16_matmul_tflops"] = rate
        sam = load_sam(resolve(args.model, zoo)).to(dev).eval()
        flops = encoder_flops(sam, dev)
        results["encoder_tflop_per_image"] = flops / 1e12
        size = sam.image_encoder.img_size

        def share(ips: float) -> float:
            return ips * flops / 1e12 / rate

        ips = time_encoder(sam.image_encoder, torch.float32, args.batch_size, size, dev, 3)
        results["encoder_fp32_images_per_s"], results["encoder_fp32_share"] = ips, share(ips)
        del sam
        eager = SamMaskEmbedder(load_sam(resolve(args.model, zoo)), settings.model_copy(update={"precision": "bf16", "compile": False}),
                                runtime, dev)  # bf16 weights + SDPA, as the embedder sets them up
        ips = time_encoder(eager.encoder, torch.bfloat16, args.batch_size, size, dev, 5)
        results["encoder_bf16_sdpa_images_per_s"], results["encoder_bf16_sdpa_share"] = ips, share(ips)
        del eager
        embedder = SamMaskEmbedder(load_sam(resolve(args.model, zoo)), settings, runtime, dev)
        compile_s = embedder.warm_up(args.batch_size)
        if settings.compile:
            results["compile_seconds"] = compile_s
            ips = time_encoder(embedder.encoder, resolve_precision(args.precision, dev), args.batch_size, size, dev, 10)
            results["encoder_compiled_images_per_s"], results["encoder_compiled_share"] = ips, share(ips)
        embed_loop(embedder, paths[: args.batch_size * 2], args.batch_size, dev)  # warm-up
        ips = embed_loop(embedder, paths, args.batch_size, dev)
        results["loop_images_per_s"], results["loop_share"] = ips, share(ips)
        del embedder
        if dev == "cuda":
            torch.cuda.empty_cache()
    else:
        sam = load_sam(resolve(args.model, zoo))
        embedder = SamMaskEmbedder(sam, settings, runtime, dev)
        results["torch_threads"] = torch.get_num_threads()
        results["loop_images_per_s"] = embed_loop(embedder, paths, args.batch_size, dev)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    resources = init_ray(None)  # Ray's own start-up is not counted; actor start-up (and compile) is
    results["ray_cpus"], results["ray_gpus"] = resources.cpus, resources.gpus
    sets = [f"images={work / 'images'}", f"out={work / 'run'}", f"runtime.models_dir={zoo}",
            f"sam.model={args.model}", "runtime.progress=false", f"runtime.batch_size={args.batch_size}",
            f"sam.precision={args.precision}", f"sam.compile={str(settings.compile).lower()}",
            f"runtime.actors_per_gpu={args.actors_per_gpu}", f"runtime.device={dev}",
            f"runtime.shard_size={args.shard_size}"]
    cfg = load_config(EmbedConfig, None, sets)
    results.update(ray_embed(cfg, args.n))
    results["ray_vs_loop"] = results["ray_images_per_s"] / results["loop_images_per_s"]
    results["ray_steady_vs_loop"] = results["ray_steady_images_per_s"] / results["loop_images_per_s"]
    if dev == "cuda" or args.encoder:
        results["ray_steady_share"] = share(results["ray_steady_images_per_s"])

    from usam_ray.data.shards import list_shards
    from usam_ray.data.schema import META_FINGERPRINT, META_MODELS
    import pyarrow.parquet as pq

    meta = pq.read_schema(list_shards(work / "run" / "embed")[0]).metadata
    token_dim = pq.read_schema(list_shards(work / "run" / "embed")[0]).field("tokens").type.value_type.list_size
    results["label_images_per_s"] = label_rate(work / "run", json.loads(meta[META_MODELS]), 20, token_dim, args.n,
                                               meta[META_FINGERPRINT].decode())
    results["label_vs_ray_embed_steady"] = results["label_images_per_s"] / results["ray_steady_images_per_s"]

    if dev == "cpu" and not args.skip_amg:
        from segment_anything import SamAutomaticMaskGenerator

        reference = load_sam(resolve(args.model, zoo))  # segment_anything's own modules, fp32
        ours = SamMaskEmbedder(load_sam(resolve(args.model, zoo)), SamConfig(points_per_side=10), None, dev)
        start = time.perf_counter()
        for img in images:
            ours.embed([img])
        ours_s = time.perf_counter() - start
        amg = SamAutomaticMaskGenerator(reference, points_per_side=10, crop_n_layers=0)
        start = time.perf_counter()
        for img in images:
            amg.generate(img)
        amg_s = time.perf_counter() - start
        amg_all = SamAutomaticMaskGenerator(reference, points_per_side=10, crop_n_layers=0, pred_iou_thresh=0.0,
                                            stability_score_thresh=0.0, box_nms_thresh=1.0)
        start = time.perf_counter()
        kept = [len(amg_all.generate(img)) for img in images]
        amg_all_s = time.perf_counter() - start
        results["grid_images_per_s"] = args.n / ours_s
        results["amg_images_per_s"] = args.n / amg_s
        results["amg_keep_all_images_per_s"] = args.n / amg_all_s
        results["amg_keep_all_masks_per_image"] = sum(kept) / len(kept)
        results["grid_vs_amg"] = amg_s / ours_s
        results["grid_vs_amg_keep_all"] = amg_all_s / ours_s

    print_results(results, args.json)


if __name__ == "__main__":
    main()
