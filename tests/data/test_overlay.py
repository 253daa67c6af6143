"""Overlays: big enough, class-coloured contours and fills, tags and a legend; contact sheets."""

import io

import numpy as np
from PIL import Image

from usam_ray.data.overlay import contact_sheet, contour_bands, overlay_index_html, render_overlay
from usam_ray.masks import class_colours


def _scene():
    image = np.full((128, 96, 3), 30, np.uint8)  # a dark image: the labels must still show
    labels = np.zeros((128, 96), np.uint8)
    square = np.zeros((128, 96), bool)
    square[20:60, 10:50] = True
    labels[square] = 2
    return image, labels, square


def test_overlay_is_large_with_contours_tags_and_a_legend():
    image, labels, square = _scene()
    names = ["background", "circle", "square"]
    plain = render_overlay(image, labels, names)
    tagged = render_overlay(image, labels, names, instances=[(square, 2, 0.87)])
    assert plain.shape[0] >= 512 + 20 and plain.shape[1] >= 384  # 4x up to 512 on the long side, + legend
    colour = class_colours(3)[2]
    s = 512 / 128
    # the contour runs in the class colour just inside the square's edge, with a dark edge outside
    edge_y, edge_x = int(40 * s), int(10 * s) + 1
    assert (plain[edge_y, edge_x] == colour).all()
    assert plain[edge_y, int(10 * s) - 1].max() < 40
    # inside, the fill tints the dark image toward the colour; outside, the image is untouched
    inside = plain[int(40 * s), int(30 * s)].astype(int)
    assert (inside != 30).any() and plain[int(100 * s), int(80 * s)].tolist() == [30, 30, 30]
    # the tag ("square 0.87") is drawn above the instance, only in the tagged version
    top = slice(int(20 * s) - 22, int(20 * s) - 2)
    assert (tagged[top, int(10 * s):int(10 * s) + 40] != plain[top, int(10 * s):int(10 * s) + 40]).any()
    # the legend strip below the image has a swatch in the class colour
    legend = plain[512:]
    assert (legend == colour).all(axis=-1).any()


def test_contour_bands_are_inside_and_outside():
    m = np.zeros((10, 10), bool)
    m[3:7, 3:7] = True
    inner, outer = contour_bands(m, 1)
    assert (inner <= m).all() and not (outer & m).any()
    assert inner.sum() == 12 and outer.sum() == 20


def test_contact_sheet_and_index_page(tmp_path):
    image, labels, _ = _scene()
    a = render_overlay(image, labels, ["background", "circle", "square"], title="ground truth", long_side=200)
    b = render_overlay(image, np.zeros_like(labels), ["background", "circle", "square"], title="prediction",
                       long_side=200)
    sheet = Image.open(io.BytesIO(contact_sheet([("scene_0", a, b), ("scene_1", a, b)])))
    assert sheet.width >= a.shape[1] + b.shape[1] and sheet.height >= 2 * a.shape[0]
    page = overlay_index_html(tmp_path, ["k1", "sub/k<2>"], "labels")
    assert 'src="k1.png"' in page and "sub/k&lt;2&gt;.png" in page
