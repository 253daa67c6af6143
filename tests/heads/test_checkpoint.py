"""Head checkpoints: saved and loaded whole, described by head.json, checked against a labelling run."""

import pytest
import torch

from usam_ray.heads.checkpoint import (
    HeadMismatchError, check_head, head_info, load_head, save_head, write_head_json,
)
from usam_ray.heads.mil import MaskClassifier

EMBEDDINGS = {"fingerprint": "f0", "models": {"sam:tiny": "aaaa"}}


def _saved(tmp_path, classes=("cat", "dog")):
    torch.manual_seed(0)
    head = MaskClassifier(16, len(classes), hidden=8, dropout=0.0).eval()
    save_head(tmp_path / "best.pt", head, list(classes), "student", 3, {"val_mil": 0.5}, EMBEDDINGS)
    return head


def test_a_saved_head_loads_and_predicts_the_same(tmp_path):
    head = _saved(tmp_path)
    loaded, ckpt = load_head(tmp_path / "best.pt")
    x = torch.randn(5, 16)
    torch.testing.assert_close(loaded(x), head(x))
    assert ckpt["classes"] == ["cat", "dog"] and ckpt["epoch"] == 3 and ckpt["embeddings"] == EMBEDDINGS


def test_head_info_reads_head_json_before_the_checkpoint(tmp_path):
    _saved(tmp_path)
    assert head_info(tmp_path / "best.pt") == {"classes": ["cat", "dog"], "embeddings": EMBEDDINGS, "method": "usam"}
    # head.json beside it wins: the checkpoint is not opened (its classes here differ on purpose)
    write_head_json(tmp_path, {"classes": ["a", "b"], "embeddings": {"fingerprint": "x", "models": {}}})
    assert head_info(tmp_path / "best.pt")["classes"] == ["a", "b"]


def test_check_head_names_both_sams_and_both_class_lists(tmp_path):
    ckpt = {"classes": ["cat", "dog"], "embeddings": EMBEDDINGS}
    check_head(ckpt, {"sam:tiny": "aaaa", "clip:tiny": "other"}, tmp_path, tmp_path / "best.pt", ["cat", "dog"])
    with pytest.raises(HeadMismatchError, match="aaaa.*bbbb"):
        check_head(ckpt, {"sam:tiny": "bbbb"}, tmp_path, tmp_path / "best.pt")
    with pytest.raises(HeadMismatchError, match=r"\['cat', 'dog'\].*\['dog', 'cat'\]"):
        check_head(ckpt, {"sam:tiny": "aaaa"}, tmp_path, tmp_path / "best.pt", ["dog", "cat"])


def test_an_alignment_head_round_trips_with_its_prototypes(tmp_path):
    from usam_ray.heads.align import AlignmentHead

    torch.manual_seed(0)
    head = AlignmentHead(12, 6, "mlp", mlp_ratio=2.0).eval()
    protos = torch.nn.functional.normalize(torch.randn(3, 6), dim=-1)
    save_head(tmp_path / "align.pt", head, ["cat", "dog"], "align", 9, {"val_patch_accuracy": 0.5}, EMBEDDINGS,
              {"method": "fmbseg", "prototypes": protos.tolist(), "prompts": ["bg", "a cat", "a dog"]})
    loaded, ckpt = load_head(tmp_path / "align.pt")
    assert isinstance(loaded, AlignmentHead) and loaded.args == head.args
    x = torch.randn(2, 4, 12)
    torch.testing.assert_close(loaded(x), head(x))
    torch.testing.assert_close(torch.tensor(ckpt["prototypes"]), protos)
    assert head_info(tmp_path / "align.pt")["method"] == "fmbseg"
