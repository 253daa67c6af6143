"""Head checkpoint files: what ``train`` writes and ``label`` reads.

A checkpoint (``teacher.pt``, ``student.pt``, ``best.pt``; FMbSeg's ``align.pt``) is a ``torch.save`` dict:
``args`` (the head's constructor arguments), ``state_dict``, ``classes`` (names, in class-id
order without background), ``phase``, ``epoch``, ``metrics`` and ``embeddings`` (``fingerprint``
and ``models``: registry name → weights fingerprint of the SAM whose tokens it was trained on;
for an alignment head, of the pseudo stage: SAM, CLIP and the DINOv2 whose features it maps).
An alignment head's checkpoint adds ``method: "fmbseg"``, ``prototypes`` ((1 + C, E) unit text
features, background first) and ``prompts`` (their texts).
``head.json`` beside them holds the classes, the embeddings' fingerprints, the training settings
and every epoch's metrics, so that a reader needs no torch to know what a head predicts;
``check_head`` refuses a head for another SAM or other classes than a labelling run's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


def save_head(path: Path, model, classes: list[str], phase: str, epoch: int, metrics: dict[str, Any],
              embeddings: dict[str, Any], extra: Optional[dict[str, Any]] = None) -> None:
    """Write ``model`` (a MaskClassifier or an AlignmentHead, unwrapped from DDP) as a head
    checkpoint at ``path``; ``extra`` adds keys (an alignment head's ``method``, ``prototypes``, ``prompts``)."""
    import torch

    torch.save({"args": model.args, "state_dict": model.state_dict(), "classes": list(classes), "phase": phase,
                "epoch": epoch, "metrics": metrics, "embeddings": embeddings, **(extra or {})}, path)


def head_checkpoint(head: Path, checkpoint: str, trainer: str) -> Path:
    """A head directory and a checkpoint name → its file (``RUN/align`` + ``best`` →
    ``RUN/align/best.pt``); a .pt path stays as it is.

    Raises:
        FileNotFoundError: no such checkpoint (saying to run ``usam-ray <trainer>`` first).
    """
    path = Path(head) / f"{checkpoint}.pt" if Path(head).is_dir() else Path(head)
    if not path.is_file():
        raise FileNotFoundError(f"head checkpoint {path} does not exist (run `usam-ray {trainer}` first)")
    return path


def load_head(path: Path, device: str = "cpu"):
    """A head checkpoint → (the head in eval mode, the checkpoint dict): an ``AlignmentHead`` when
    the checkpoint says ``method: fmbseg``, else U-SAM's ``MaskClassifier``."""
    import torch

    from .align import AlignmentHead
    from .mil import MaskClassifier

    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = (AlignmentHead if ckpt.get("method") == "fmbseg" else MaskClassifier)(**ckpt["args"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def write_head_json(head_dir: Path, summary: dict[str, Any]) -> None:
    """``head.json``: classes, embeddings (fingerprint, models), settings, metrics, best epoch."""
    (Path(head_dir) / "head.json").write_text(json.dumps(summary, indent=2, default=str))


def head_info(path: Path) -> dict[str, Any]:
    """What a head predicts and what it was trained on — ``classes``, ``embeddings`` and ``method``
    (``usam`` or ``fmbseg``) — from the ``head.json`` beside the checkpoint, or (a checkpoint on its
    own) from the checkpoint."""
    path = Path(path)
    meta = path.parent / "head.json"
    if meta.is_file():
        data = json.loads(meta.read_text())
        if "classes" in data and "embeddings" in data:
            return {"classes": data["classes"], "embeddings": data["embeddings"], "method": data.get("method", "usam")}
    _model, ckpt = load_head(path)
    return {"classes": ckpt["classes"], "embeddings": ckpt["embeddings"], "method": ckpt.get("method", "usam")}


class HeadMismatchError(ValueError):
    """A head trained on embeddings of another SAM (or other classes) than the labelling run's."""


def check_head(ckpt: dict, embed_models: dict[str, str], embed_dir: Path, head_path: Path,
               classes: Optional[list[str]] = None) -> None:
    """Refuse a head trained on another SAM's embeddings, or for other classes than asked.

    Raises:
        HeadMismatchError: naming both SAM fingerprints (or both class lists).
    """
    trained = {k: v for k, v in ckpt["embeddings"]["models"].items() if k.startswith("sam:")}
    labelling = {k: v for k, v in embed_models.items() if k.startswith("sam:")}
    if trained != labelling:
        raise HeadMismatchError(
            f"head {head_path} was trained on embeddings of {trained} but {embed_dir} holds embeddings of "
            f"{labelling}: train a head on this SAM's embeddings, or label with the SAM the head knows"
        )
    if classes is not None and list(classes) != list(ckpt["classes"]):
        raise HeadMismatchError(f"head {head_path} predicts {ckpt['classes']}, not the requested {classes}")
