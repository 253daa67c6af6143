"""Instances → Label Studio pre-annotations (tasks with ``predictions`` of brush labels).

Label Studio imports a JSON list of tasks; each task's ``data.image`` is an URL it can fetch and
its ``predictions[].result`` are regions. Brush regions carry their mask as Label Studio's own
run-length code (``value.format = "rle"``, ``value.rle``: a list of byte values): the mask as a
flat RGBA buffer of ``height × width × 4`` bytes (255 in every channel inside the mask, 0 outside)
packed with the thi.ng ``rle-pack`` bit format that Label Studio's front end decodes. The project
needs a labeling config whose ``BrushLabels`` name and ``Image`` name match the results'
``from_name`` / ``to_name``: ``labeling_config`` writes one.

Format of the code (``rle-pack``): a 32-bit value count, 5 bits word size − 1 (8 → 7), four 4-bit
run-length field sizes − 1 (3, 4, 8, 16 bits); then per chunk: 1 bit "repeat", 2 bits choosing a
run-length field, that field holding length − 1, and one 8-bit word (a repeat chunk) or ``length``
words (a literal chunk); padded with zero bits to whole bytes, most significant bit first.
"""

from __future__ import annotations

import xml.sax.saxutils as su
from typing import Sequence

import numpy as np

RLE_SIZES = (3, 4, 8, 16)
WORD_BITS = 8


def _bits(value: int, width: int) -> str:
    return format(value, f"0{width}b")


def brush_rle(mask: np.ndarray) -> list[int]:
    """A (H, W) bool mask as Label Studio brush RLE (list of byte values).

    Every pixel is 4 equal bytes (RGBA), so runs are at least 4 long and all chunks are repeats.
    """
    flat = np.repeat(np.asarray(mask, dtype=bool).reshape(-1), 4)
    n = flat.size
    parts = [_bits(n, 32), _bits(WORD_BITS - 1, 5), *(_bits(s - 1, 4) for s in RLE_SIZES)]
    if n:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [n]]))
        for start, length in zip(starts.tolist(), lengths.tolist()):
            word = _bits(255 if flat[start] else 0, WORD_BITS)
            while length > 0:
                take = min(length, 1 << RLE_SIZES[-1])
                if take == 1:  # a literal chunk of one word
                    parts.append("0" + "00" + _bits(0, RLE_SIZES[0]) + word)
                else:
                    idx = next(i for i, s in enumerate(RLE_SIZES) if take <= 1 << s)
                    parts.append("1" + _bits(idx, 2) + _bits(take - 1, RLE_SIZES[idx]) + word)
                length -= take
    bits = "".join(parts)
    bits += "0" * (-len(bits) % 8)
    packed = np.packbits(np.frombuffer(bits.encode("ascii"), np.uint8) - ord("0"))
    return packed.tolist()


def task_image_url(template: str, file_name: str) -> str:
    """The task's image URL from a template with ``{file_name}``."""
    return template.format(file_name=file_name)


def label_studio_tasks(images: Sequence[dict], instances: Sequence[dict], classes: Sequence[str],
                       url_template: str, model_version: str, from_name: str = "label",
                       to_name: str = "image") -> list[dict]:
    """One Label Studio task per labelled image with its instances as brush-label predictions.

    Args:
        images (Sequence[dict]): labelled-image rows (``image_id`` key, ``file_name``, ``height``, ``width``).
        instances (Sequence[dict]): instance rows (``image_id`` key, ``class_id`` 1-based, ``score``,
            ``height``, ``width``, ``counts`` COCO RLE bytes).
        classes (Sequence[str]): class names without background.
        url_template (str): image URL with ``{file_name}``.
        model_version (str): shown by Label Studio beside each prediction.
        from_name (str), to_name (str): names of the ``BrushLabels`` and ``Image`` tags.

    Returns:
        list of tasks: ``{"data": {"image": url, "usam_ray_key": key}, "predictions": [{"model_version",
        "score", "result": [{"id", "type": "brushlabels", "from_name", "to_name", "original_width",
        "original_height", "image_rotation", "value": {"format": "rle", "rle", "brushlabels"}, "score"}]}]}``.
    """
    from pycocotools import mask as mask_utils

    by_image: dict[str, list[dict]] = {}
    for row in instances:
        by_image.setdefault(row["image_id"], []).append(row)
    tasks = []
    for im in sorted(images, key=lambda r: r["image_id"]):
        rows = sorted(by_image.get(im["image_id"], []), key=lambda r: -float(r["score"]))
        result = []
        for k, row in enumerate(rows):
            mask = mask_utils.decode({"size": [int(row["height"]), int(row["width"])], "counts": bytes(row["counts"])})
            result.append({
                "id": f"{im['image_id']}#{k}", "type": "brushlabels", "from_name": from_name, "to_name": to_name,
                "original_width": int(row["width"]), "original_height": int(row["height"]), "image_rotation": 0,
                "value": {"format": "rle", "rle": brush_rle(mask.astype(bool)),
                          "brushlabels": [classes[int(row["class_id"]) - 1]]},
                "score": float(row["score"]),
            })
        score = float(np.mean([r["score"] for r in result])) if result else 0.0
        tasks.append({"data": {"image": task_image_url(url_template, im["file_name"]), "usam_ray_key": im["image_id"]},
                      "predictions": [{"model_version": model_version, "score": round(score, 5), "result": result}]})
    return tasks


def labeling_config(classes: Sequence[str], colours: np.ndarray, from_name: str = "label",
                    to_name: str = "image") -> str:
    """The Label Studio labeling config (XML) matching ``label_studio_tasks``: an ``Image`` and a
    ``BrushLabels`` tag with one ``Label`` per class in its overlay colour.

    Args:
        colours (np.ndarray): (C + 1, 3) uint8 colours by class id (index 0 unused).
    """
    labels = "".join(
        f'    <Label value={su.quoteattr(c)} background="#{int(colours[i + 1][0]):02x}{int(colours[i + 1][1]):02x}'
        f'{int(colours[i + 1][2]):02x}"/>\n' for i, c in enumerate(classes))
    return (f'<View>\n  <Image name={su.quoteattr(to_name)} value="$image" zoom="true"/>\n'
            f'  <BrushLabels name={su.quoteattr(from_name)} toName={su.quoteattr(to_name)}>\n{labels}'
            "  </BrushLabels>\n</View>\n")
