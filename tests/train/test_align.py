"""FMbSeg Stage 2 through Ray Train: pseudo-label and feature shards → alignment module.

The shards are written as ``usam-ray pseudo`` writes them, with constructed DINOv2 features: a
patch's feature is its class's direction plus noise, where its pseudo mask says which class it
is. The module must learn to put those patches at their class's text prototype (measured on
the patches of images it did not train on), and the checkpoint must carry what labelling needs.
"""

import numpy as np
import pyarrow as pa
import pytest
import torch

from usam_ray.config import TrainAlignConfig, load_config
from usam_ray.data.schema import PSEUDO_SCHEMA, features_table, pseudo_masksets, shard_metadata
from usam_ray.data.shards import update_manifest, write_shard
from usam_ray.heads.align import label_patches
from usam_ray.heads.checkpoint import head_info, load_head
from usam_ray.masks import masks_to_rles
from usam_ray.methods.fmbseg import STAGE_11, patch_targets, pseudo_label_map
from usam_ray.models.registry import resolve
from usam_ray.train.align import patch_rows, pseudo_info, train_align
from usam_ray.train.usam import TrainDataError

pytestmark = pytest.mark.slow
CLASSES = ["circle", "square", "triangle", "star", "ring"]
G, D, SIZE = 8, 32, 64  # 8×8 patches of 8 px on 64² images, 32-wide features


def _image(rng, directions, noise=0.6):
    """One image: a square per class present (1.1) and a smaller Stage 1.2 mask; features that
    follow the pseudo label map."""
    classes = rng.choice(len(CLASSES), 2, replace=False)
    masks, stage = [], []
    for k, c in enumerate(classes):
        m = np.zeros((SIZE, SIZE), bool)
        y0, x0 = (8, 8) if k == 0 else (40, 32)
        m[y0:y0 + 16, x0:x0 + 24] = True
        masks.append(m)
        stage.append("1.1")
    m12 = np.zeros((SIZE, SIZE), bool)
    m12[48:64, 0:16] = True
    masks.append(m12)
    stage.append("1.2")
    class_id = [int(c) + 1 for c in classes] + [int(classes[0]) + 1]
    return np.stack(masks), stage, class_id


def _write_run(run, rng, n=60, shard=12):
    directions = rng.normal(0, 1, (len(CLASSES) + 1, D)).astype(np.float32) * 1.5
    for s in range(0, n, shard):
        rows, feats, ids = [], [], []
        for i in range(s, min(n, s + shard)):
            masks, stage, class_id = _image(rng, directions)
            image_id = f"img{i:03d}.png"
            rles = masks_to_rles(masks)
            row = {"image_id": image_id, "path": image_id, "labels": [], "height": SIZE, "width": SIZE,
                   "detected": [CLASSES[c - 1] for c in class_id[:2]], "class_id": class_id, "stage": stage,
                   "score": [0.9] * len(stage), "boxes": [[0.0, 0.0, 1.0, 1.0]] * len(stage),
                   "mask_counts": [r["counts"] for r in rles], "provenance": ["x"] * len(stage)}
            rows.append(row)
            # the features follow the map Stage 2 trains on (all of 1.1 + the chosen 1.2 masks)
            ms = pseudo_masksets(pa.Table.from_pylist([row], schema=PSEUDO_SCHEMA))[0]
            target = patch_targets(pseudo_label_map(ms, np.ones(len(ms), bool), SIZE, SIZE), G, len(CLASSES))
            feats.append(directions[target] + rng.normal(0, 0.6, (G * G, D)).astype(np.float32))
            ids.append(image_id)
        name = f"part-{s:04d}.parquet"
        meta = {"sam:toy": "s", "clip:toy": resolve("clip:toy").fingerprint(), "dino:test": "d"}
        write_shard(pa.Table.from_pylist(rows, schema=PSEUDO_SCHEMA), run / "pseudo" / name,
                    shard_metadata("pseudo", "fp-pseudo", meta))
        write_shard(features_table(ids, feats), run / "features" / name, shard_metadata("features", "fp-pseudo", meta))
    update_manifest(run, "pseudo", classes=CLASSES, status="complete")


def test_patch_rows_follow_the_pseudo_map_and_the_seeded_share(tmp_path):
    rng = np.random.default_rng(1)
    _write_run(tmp_path, rng, n=4, shard=4)
    import pyarrow.parquet as pq

    pseudo = pq.read_table(tmp_path / "pseudo" / "part-0000.parquet")
    feats = pq.read_table(tmp_path / "features" / "part-0000.parquet")
    every = patch_rows(pseudo, feats, len(CLASSES), 1.0, 0, 0.0)
    none12 = patch_rows(pseudo, feats, len(CLASSES), 0.0, 0, 0.0)
    assert every["features"].shape == (4, G * G * D) and every["targets"].shape == (4, G * G)
    ms = pseudo_masksets(pseudo)[0]
    assert list(ms.data["stage"]) == [STAGE_11, STAGE_11, 12]
    # the 1.2 square (rows 48-63, columns 0-15 → cells (6..7, 0..1)) is its class with 100 %, background with 0 %
    cell = 6 * G + 0
    assert every["targets"][0, cell] == ms.class_ids[2] + 1 and none12["targets"][0, cell] == 0
    # 1.1 cells are the same either way; cells no mask covers are background
    assert (every["targets"][:, 0] == 0).all() and every["targets"][0, 2 * G + 2] == ms.class_ids[0] + 1
    assert (every["targets"][0, 1 * G + 1:1 * G + 4] == none12["targets"][0, 1 * G + 1:1 * G + 4]).all()
    assert every["val"].dtype == bool and list(every["image_id"]) == [f"img{i:03d}.png" for i in range(4)]


def test_alignment_module_learns_to_put_patches_at_their_class_text(tmp_path, ray_session):
    rng = np.random.default_rng(0)
    _write_run(tmp_path, rng)
    cfg = load_config(TrainAlignConfig, None, [f"pseudo={tmp_path / 'pseudo'}", f"out={tmp_path / 'align'}",
                                               "epochs=10", "lr=0.3", "fmbseg.stage12_fraction=1.0", "val_fraction=0.2",
                                               "runtime.progress=false"])
    summary = train_align(cfg, log=lambda _l: None)
    history = summary["metrics"]
    assert [m["epoch"] for m in history] == list(range(10))
    assert history[-1]["loss"] < history[0]["loss"]
    # held-out images: most patches nearest their own class's prototype (chance 1/6; background-only 0.6)
    assert summary["best"]["val_patch_accuracy"] > 0.9
    head, ckpt = load_head(tmp_path / "align" / "best.pt")
    assert ckpt["method"] == "fmbseg" and ckpt["classes"] == CLASSES and head.args["kind"] == "block"
    protos = torch.tensor(ckpt["prototypes"])
    assert protos.shape == (len(CLASSES) + 1, head.args["out_dim"])
    assert ckpt["prompts"][0] == "a photo of the background" and ckpt["prompts"][1] == "a photo of a circle"
    assert ckpt["embeddings"] == {"fingerprint": "fp-pseudo", "models": pseudo_info(
        tmp_path / "pseudo", tmp_path / "features")["models"]}
    info = head_info(tmp_path / "align" / "best.pt")
    assert info["method"] == "fmbseg" and info["classes"] == CLASSES
    # the checkpoint labels a fresh image's patches as the rows were built
    masks, stage, class_id = _image(rng, None)
    import pyarrow.parquet as pq

    row = patch_rows(pq.read_table(tmp_path / "pseudo" / "part-0000.parquet"),
                     pq.read_table(tmp_path / "features" / "part-0000.parquet"), len(CLASSES), 1.0, 0, 0.0)
    x = torch.tensor(row["features"][:4].astype(np.float32)).reshape(4, G * G, D)
    pred = label_patches(head(x), protos).argmax(-1).numpy()
    assert (pred == row["targets"][:4]).mean() > 0.9


def test_train_align_refuses_missing_inputs(tmp_path):
    cfg = load_config(TrainAlignConfig, None, [f"pseudo={tmp_path / 'pseudo'}", f"out={tmp_path / 'align'}"])
    with pytest.raises(TrainDataError, match="run `usam-ray pseudo` first"):
        train_align(cfg, log=lambda _l: None)
    _write_run(tmp_path, np.random.default_rng(2), n=4, shard=4)
    (tmp_path / "run.json").unlink()
    with pytest.raises(TrainDataError, match="does not say which classes"):
        train_align(cfg, log=lambda _l: None)
