"""Overlays a person can read at a glance: labels drawn over their image, and contact sheets.

``render_overlay`` scales the image up to at least ``long_side`` pixels on its long side, fills
each labelled region lightly in its class colour, draws every instance's (or class region's)
contour as a class-coloured line with a dark outer edge (visible on light and dark objects
alike), puts "class score" tags at each instance, and adds a legend of the classes shown.
``contact_sheet`` puts rows of overlays side by side (ground truth beside prediction);
``overlay_index_html`` is a page of a labels folder's overlays. ``label_png`` encodes a class-id
map as the paletted PNG every label folder holds; ``instance_overlay`` draws one labelled image.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..masks import class_colours

IGNORE = 255


def read_rgb(path: str) -> Optional[np.ndarray]:
    """An image file as (H, W, 3) uint8 RGB, or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError):
        return None


def png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 → PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def label_png(label_map: np.ndarray, pal: list[int]) -> bytes:
    """A paletted PNG of a (H, W) uint8 class-id map (``pal``: 768 ints, as ``masks.palette()``)."""
    from PIL import Image

    img = Image.fromarray(label_map, "P")
    img.putpalette(pal)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def instance_overlay(image_path: str, label_map: np.ndarray, classes: list[str], inst) -> Optional[bytes]:
    """The image with its instances drawn (class-coloured fills and contours, "class score" tags,
    a legend), at least 512 px on its long side; None when the image cannot be read or its size
    differs from the label map's.

    Args:
        image_path (str): the image file.
        label_map (np.ndarray): (H, W) uint8 class ids.
        classes (list[str]): class names without background.
        inst (MaskSet): the image's instances (RLE masks, 0-based class ids, scores).
    """
    from ..masks import rles_to_masks

    image = read_rgb(image_path)
    if image is None or image.shape[:2] != label_map.shape:
        return None
    masks = rles_to_masks(list(inst.masks), label_map.shape)  # (N, H, W) bool
    shapes = [(m, int(c) + 1, float(sc)) for m, c, sc in zip(masks, inst.class_ids, inst.scores)]
    return png(render_overlay(image, label_map, ["background", *classes], shapes))


def _shift_any(mask: np.ndarray, r: int) -> np.ndarray:
    """Dilation of a boolean mask by a (2r+1)² square (max over shifts)."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            src = mask[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            out[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] |= src
    return out


def contour_bands(mask: np.ndarray, width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(inner, outer) boolean bands of a mask's contour: ``width`` pixels inside the edge and one
    pixel outside it."""
    inner = mask & _shift_any(~mask, width)
    outer = _shift_any(mask, 1) & ~mask
    return inner, outer


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def render_overlay(image: np.ndarray, label_map: np.ndarray, class_names: Sequence[str],
                   instances: Optional[Sequence[tuple[np.ndarray, int, float]]] = None,
                   title: Optional[str] = None, long_side: int = 512, fill_alpha: float = 0.35) -> np.ndarray:
    """Draw labels over their image.

    Args:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        label_map (np.ndarray): (H, W) uint8 class ids (0 background, 255 ignore, shown grey).
        class_names (Sequence[str]): names by class id, index 0 the background.
        instances (Sequence[(mask (H, W) bool, class id, score)] | None): instances to outline and
            tag "name score"; None: outline each class region of ``label_map`` instead.
        title (str | None): a caption above the image.
        long_side (int): the image is scaled up (never down) to at least this many pixels on its
            long side.
        fill_alpha (float): opacity of the class-colour fill.

    Returns:
        np.ndarray: (H', W', 3) uint8, the image scaled by ``s = max(1, long_side / max(H, W))``
        plus a title bar and a legend strip.
    """
    from PIL import Image, ImageDraw

    h, w = label_map.shape
    scale = max(1.0, long_side / max(h, w))
    size = (int(round(w * scale)), int(round(h * scale)))

    def up(mask: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(size, Image.NEAREST))

    base = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), np.float32)
    labels = up(label_map)
    colours = class_colours(max(len(class_names), int(labels[labels != IGNORE].max(initial=0)) + 1))
    lut = np.zeros((256, 3), np.float32)
    lut[:len(colours)] = colours
    lut[IGNORE] = (160, 160, 160)
    alpha = ((labels > 0) * fill_alpha)[..., None]
    out = base * (1 - alpha) + lut[labels] * alpha
    line = max(2, int(round(scale)))
    shapes = ([(up(m).astype(bool), int(c), float(s)) for m, c, s in instances] if instances is not None else
              [(labels == c, int(c), None) for c in np.unique(labels) if c not in (0, IGNORE)])
    for mask, c, _s in shapes:
        inner, outer = contour_bands(mask, line)
        out[outer] = (20, 20, 20)
        out[inner] = lut[c]
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(11, min(18, size[0] // 32)))

    def name(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else f"class {c}"

    for mask, c, s in shapes:
        if s is None or not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        text = f"{name(c)} {s:.2f}"
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        tx, ty = int(xs.min()), max(0, int(ys.min()) - (y1 - y0) - 4)
        tx = min(tx, max(0, size[0] - (x1 - x0) - 4))
        fill = tuple(int(v) for v in lut[c])
        draw.rectangle([tx, ty, tx + x1 - x0 + 4, ty + y1 + 3], fill=fill, outline=(20, 20, 20))
        ink = (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 140 else (255, 255, 255)
        draw.text((tx + 2, ty + 1), text, fill=ink, font=font)
    present = sorted({int(c) for c in np.unique(labels) if c not in (0, IGNORE)} | {c for _m, c, _s in shapes})
    return _frame(np.asarray(canvas), title, [(name(c), tuple(int(v) for v in lut[c])) for c in present], font)


def _frame(image: np.ndarray, title: Optional[str], legend: list[tuple[str, tuple[int, int, int]]], font) -> np.ndarray:
    """Add a title bar above and a legend strip below ``image``."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    row = font.size + 8 if hasattr(font, "size") else 18
    # legend entries laid out left to right, wrapping
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items, x, y = [], 6, 0
    for text, colour in legend or [("no labels", (255, 255, 255))]:
        width = row + probe.textlength(text, font=font) + 14
        if x + width > w and x > 6:
            x, y = 6, y + row
        items.append((x, y, text, colour))
        x += width
    legend_h = y + row + 6
    top = row + 4 if title else 0
    canvas = Image.new("RGB", (w, h + top + legend_h), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 3), title, fill=(0, 0, 0), font=font)
    for x, y, text, colour in items:
        y0 = h + top + 4 + y
        draw.rectangle([x, y0 + 2, x + row - 6, y0 + row - 4], fill=colour, outline=(20, 20, 20))
        draw.text((x + row, y0 + 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def contact_sheet(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], gap: int = 8) -> bytes:
    """PNG of rows ``(caption, left, right)`` (e.g. ground truth beside prediction), one row per image."""
    from PIL import Image, ImageDraw

    font = _font(14)
    cell_w = max(max(a.shape[1], b.shape[1]) for _k, a, b in rows)
    heights = [max(a.shape[0], b.shape[0]) + 22 for _k, a, b in rows]
    sheet = Image.new("RGB", (2 * cell_w + 3 * gap, sum(heights) + gap * (len(rows) + 1)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = gap
    for (key, left, right), hgt in zip(rows, heights):
        draw.text((gap, y), key, fill=(0, 0, 0), font=font)
        sheet.paste(Image.fromarray(left), (gap, y + 20))
        sheet.paste(Image.fromarray(right), (2 * gap + cell_w, y + 20))
        y += hgt + gap
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return buf.getvalue()


def overlay_index_html(overlay_dir: Path, keys: Sequence[str], title: str, limit: int = 200) -> str:
    """An HTML page showing the overlays ``overlay_dir/<key>.png`` of the first ``limit`` keys."""
    cells = []
    for key in list(keys)[:limit]:
        src = html.escape(f"{key}.png")
        cells.append(f'<figure><a href="{src}"><img src="{src}" loading="lazy"></a>'
                     f"<figcaption>{html.escape(key)}</figcaption></figure>")
    more = f"<p>… and {len(keys) - limit} more in this folder.</p>" if len(keys) > limit else ""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;margin:16px}main{display:flex;flex-wrap:wrap;gap:12px}"
            "figure{margin:0;width:320px}img{width:320px;border:1px solid #ccc}"
            "figcaption{font-size:12px;word-break:break-all}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{len(keys)} images; click one for full size.</p><main>"
            + "".join(cells) + "</main>" + more + "</body></html>")
