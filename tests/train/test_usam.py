"""U-SAM heads trained through Ray Train on embedding shards of synthetic bags."""


import numpy as np
import pytest
import torch

from usam_ray.config import TrainUsamConfig, load_config
from usam_ray.data.schema import embeddings_table, shard_metadata
from usam_ray.data.shards import write_shard
from usam_ray.masks import mask_to_rle
from usam_ray.heads.checkpoint import load_head
from usam_ray.train.usam import TrainDataError, class_list, train_usam

pytestmark = pytest.mark.slow
CLASSES = ["circle", "ring", "star"]
P, T = 16, 32


def _bags(rng, n, centres):
    tokens = rng.normal(0, 1, (n, P, T)).astype(np.float32)
    y = rng.integers(0, len(CLASSES), n)
    truth = np.full((n, P), -1)
    for i in range(n):
        idx = rng.choice(P, 3, replace=False)
        tokens[i, idx] += centres[y[i]]
        truth[i, idx] = y[i]
    return tokens, y, truth


def _lists(values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _write_embeddings(run, rng, centres, n=240, shard=60, labels=True):
    tokens, y, truth = _bags(rng, n, centres)
    rle = mask_to_rle(np.ones((4, 4), bool))["counts"]
    for s in range(0, n, shard):
        sl = slice(s, s + shard)
        m = len(range(n)[sl])
        counts = np.empty(m, dtype=object)
        counts[:] = [[rle] * P for _ in range(m)]
        batch = {"image_id": np.array([f"img{i}" for i in range(s, s + m)], object),
                 "path": np.array(["p"] * m, object),
                 "labels": _lists([[CLASSES[k]] if labels else [] for k in y[sl]]),
                 "height": np.full(m, 4), "width": np.full(m, 4), "points": np.zeros((m, P, 2)),
                 "tokens": tokens[sl], "iou": np.zeros((m, P)), "stability": np.zeros((m, P)),
                 "boxes": np.zeros((m, P, 4)), "mask_counts": counts}
        write_shard(embeddings_table(batch, T), run / "embed" / f"part-{s:04d}.parquet",
                    shard_metadata("embeddings", "fp-embed", {"sam:test": "w"}))


def test_teacher_and_student_learn_instance_classes_from_image_labels(tmp_path, ray_session):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (len(CLASSES), T)) * 2.5
    _write_embeddings(tmp_path, rng, centres)
    cfg = load_config(TrainUsamConfig, None, [f"embeddings={tmp_path / 'embed'}", f"out={tmp_path / 'head'}",
                                              "epochs=6", "batch_size=32", "a=5", "hidden=64", "dropout=0.0"])
    summary = train_usam(cfg, log=lambda _l: None)
    assert summary["classes"] == CLASSES and summary["embeddings"]["fingerprint"] == "fp-embed"
    phases = [m["phase"] for m in summary["metrics"]]
    assert phases == ["teacher"] * 6 + ["student"] * 6
    teacher_losses = [m["mil"] for m in summary["metrics"] if m["phase"] == "teacher"]
    assert teacher_losses[-1] < teacher_losses[0]
    assert all(m["unc"] > 0 for m in summary["metrics"] if m["phase"] == "student")
    assert {m["lr"] for m in summary["metrics"]} == {cfg.lr}  # the paper's constant rate by default
    xt, _y, truth = _bags(np.random.default_rng(9), 200, centres)
    for name in ("teacher.pt", "student.pt", "best.pt"):
        head, ckpt = load_head(tmp_path / "head" / name)
        assert ckpt["classes"] == CLASSES and ckpt["embeddings"]["fingerprint"] == "fp-embed"
        with torch.no_grad():
            pred = head(torch.as_tensor(xt)).argmax(-1).numpy()
        accuracy = (pred[truth >= 0] == truth[truth >= 0]).mean()
        assert accuracy > 0.85, f"{name}: instance accuracy {accuracy:.3f}"  # chance 1/3


def test_class_list_checks(tmp_path):
    rng = np.random.default_rng(1)
    _write_embeddings(tmp_path / "a", rng, np.zeros((3, T)), n=10, shard=10)
    assert class_list(tmp_path / "a" / "embed", None) == CLASSES
    with pytest.raises(TrainDataError, match="star"):
        class_list(tmp_path / "a" / "embed", ["circle", "ring"])
    _write_embeddings(tmp_path / "b", rng, np.zeros((3, T)), n=10, shard=10, labels=False)
    with pytest.raises(TrainDataError, match="no labels"):
        class_list(tmp_path / "b" / "embed", None)


def test_training_is_reproducible_whatever_the_shard_layout_and_keeps_two_checkpoints(tmp_path, ray_session):
    """The same embeddings in other shards (another run's write order) train the same heads: bags
    are ordered by image id and each epoch's order comes from the seed. Ray Train keeps the best
    and the last checkpoint of each phase, not one per epoch. The cosine schedule anneals each
    phase's rate from lr towards 0 (the epoch's first step's rate is reported)."""
    centres = np.random.default_rng(5).normal(0, 1, (len(CLASSES), T)) * 2.5
    heads = []
    for run, shard in (("a", 60), ("b", 37)):
        _write_embeddings(tmp_path / run, np.random.default_rng(3), centres, n=120, shard=shard)
        cfg = load_config(TrainUsamConfig, None, [f"embeddings={tmp_path / run / 'embed'}",
                                                  f"out={tmp_path / run / 'head'}", "epochs=4", "batch_size=16",
                                                  "a=5", "hidden=32", "dropout=0.2", "lr_schedule=cosine"])
        lines = []
        summary = train_usam(cfg, log=lines.append)
        heads.append({n: load_head(tmp_path / run / "head" / f"{n}.pt")[1] for n in ("teacher", "student", "best")})
        assert any(line.startswith("train teacher: 4/4 epochs") for line in lines)
        assert any(line.startswith("train student: 4/4 epochs") for line in lines)
        for phase in ("teacher", "student"):
            kept = [d for d in (tmp_path / run / "head" / "ray" / phase).glob("checkpoint_*") if d.is_dir()]
            scores = [m["checkpoint_score"] for m in summary["metrics"] if m["phase"] == phase]
            assert len(kept) == len({int(np.argmax(scores)), len(scores) - 1}), (kept, scores)  # the best, the last
        assert [m["epoch"] for m in summary["metrics"]] == [0, 1, 2, 3] * 2
        for phase in ("teacher", "student"):  # annealed from lr towards 0 over each phase: 1, cos²(π/8), ½, cos²(3π/8)
            lrs = [m["lr"] / cfg.lr for m in summary["metrics"] if m["phase"] == phase]
            np.testing.assert_allclose(lrs, [1.0, 0.8536, 0.5, 0.1464], atol=2e-3)
    for name in ("teacher", "student", "best"):
        a, b = heads[0][name], heads[1][name]
        assert a["epoch"] == b["epoch"]
        for key in a["state_dict"]:
            torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=1e-6)
