"""Label Studio pre-annotations: brush RLE that Label Studio's decoder reads back, tasks with the
fields its importer needs, and a labeling config whose tag names match the results."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from usam_ray.data.label_studio import brush_rle, label_studio_tasks, labeling_config
from usam_ray.masks import class_colours, mask_to_rle


def decode_rle_pack(data: list[int]) -> np.ndarray:
    """An independent reader of the thi.ng rle-pack format Label Studio's front end decodes
    (header: 32-bit count, 5-bit word size - 1, four 4-bit run-length sizes - 1; chunks: repeat
    bit, 2-bit size index, length - 1, then one word or ``length`` words)."""
    bits = "".join(format(b, "08b") for b in data)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        value = int(bits[pos:pos + n], 2)
        pos += n
        return value

    num, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (64, 48), (300, 400)])
def test_brush_rle_round_trips(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) > 0.6
    if shape == (300, 400):  # runs longer than 2**16 values (RGBA) are split
        mask = np.zeros(shape, bool)
        mask[20:280, 10:390] = True
    rgba = decode_rle_pack(brush_rle(mask)).reshape(*shape, 4)
    np.testing.assert_array_equal(rgba[..., 3] > 0, mask)
    assert set(np.unique(rgba)) <= {0, 255}


def test_brush_rle_equals_label_studio_sdks_own_encoder():
    """A round trip through the library on the package index, when it is installed (CI installs it
    with --no-deps: its full dependency set pins an older numpy)."""
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    rng = np.random.default_rng(0)
    for shape in ((7, 9), (120, 90)):
        mask = rng.random(shape) > 0.5
        theirs = brush.mask2rle(mask.astype(np.uint8) * 255)
        ours = brush_rle(mask)
        # the same code up to padding (theirs adds a whole zero byte when the bits end on a byte)
        assert theirs[:len(ours)] == ours and not any(theirs[len(ours):])
        rgba = brush.decode_rle(ours).reshape(*shape, 4)
        np.testing.assert_array_equal(rgba[..., 3] > 0, mask)


def test_tasks_and_labeling_config_fit_together():
    m = np.zeros((20, 30), bool)
    m[2:10, 3:20] = True
    rle = mask_to_rle(m)
    images = [{"image_id": "sub/a", "file_name": "sub/a.jpg", "height": 20, "width": 30},
              {"image_id": "b", "file_name": "b.png", "height": 20, "width": 30}]
    instances = [{"image_id": "sub/a", "class_id": 2, "score": 0.8, "height": 20, "width": 30, "counts": rle["counts"]}]
    tasks = label_studio_tasks(images, instances, ["cat", "dog"], "/data/local-files/?d=photos/{file_name}", "v1")
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=photos/b.png",
                                                    "/data/local-files/?d=photos/sub/a.jpg"]
    assert tasks[0]["predictions"][0]["result"] == []  # an image without instances is still a task
    region = tasks[1]["predictions"][0]["result"][0]
    assert {"id", "type", "from_name", "to_name", "original_width", "original_height", "value"} <= set(region)
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["dog"]
    assert region["value"]["format"] == "rle"
    decoded = decode_rle_pack(region["value"]["rle"]).reshape(20, 30, 4)[..., 3] > 0
    np.testing.assert_array_equal(decoded, m)
    xml = ET.fromstring(labeling_config(["cat", "dog"], class_colours(3)))
    brush = xml.find("BrushLabels")
    assert brush.get("name") == region["from_name"] and brush.get("toName") == region["to_name"]
    assert xml.find("Image").get("name") == region["to_name"] and xml.find("Image").get("value") == "$image"
    assert [label.get("value") for label in brush.findall("Label")] == ["cat", "dog"]
