import numpy as np
import pytest

from usam_ray.types import ImageRecord, MaskSet, Ontology


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"), ("dog,,cat", "empty"), ("dog, dog", "twice"), (" , ", "empty"),
])
def test_ontology_rejects_bad_class_lists(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        Ontology.from_names(text)


def test_ontology_strips_and_indexes():
    o = Ontology.from_names(" person, bicycle ,dog")
    assert o.classes == ("person", "bicycle", "dog")
    assert o.index("dog") == 2
    with pytest.raises(KeyError, match="cat"):
        o.index("cat")


def test_maskset_validates_shapes():
    masks = np.zeros((2, 4, 4), bool)
    ms = MaskSet(masks, np.zeros((2, 4)), np.zeros(2), data={"tokens": np.zeros((2, 8))})
    assert ms.class_ids.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="boxes"):
        MaskSet(masks, np.zeros((3, 4)), np.zeros(2))
    with pytest.raises(ValueError, match="tokens"):
        MaskSet(masks, np.zeros((2, 4)), np.zeros(2), data={"tokens": np.zeros((3, 8))})
    with pytest.raises(ValueError, match="bool"):
        MaskSet(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4)), np.zeros(2))


def test_image_record_requires_rgb_uint8():
    with pytest.raises(ValueError, match="img1"):
        ImageRecord("img1", "p", np.zeros((4, 4), np.uint8))
