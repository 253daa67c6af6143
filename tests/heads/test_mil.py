"""U-SAM losses on hand-worked cases, and learning on synthetic bags."""

import math

import numpy as np
import pytest
import torch

from usam_ray.heads.mil import (
    MaskClassifier, bad_masks, bag_scores, mil_loss, student_loss, topk_count, uncertainty_loss,
)


@pytest.mark.parametrize("d, a, k", [(100, 10, 10), (101, 10, 11), (5, 10, 1), (1, 3, 1), (0, 3, 1)])
def test_topk_count(d, a, k):
    assert topk_count(torch.tensor([d]), a).item() == k


def test_bag_scores_mean_of_topk_per_class_ignoring_padding():
    logits = torch.tensor([[[1.0, 0.0], [5.0, -1.0], [3.0, 2.0], [100.0, 100.0]]])  # last is padding
    valid = torch.tensor([[True, True, True, False]])
    # d = 3, a = 2 → k = 2: class 0 top2 of (1, 5, 3) = 5, 3 → 4 ; class 1 top2 of (0, -1, 2) = 2, 0 → 1
    np.testing.assert_allclose(bag_scores(logits, valid, a=2).numpy(), [[4.0, 1.0]])


def test_mil_loss_uses_normalised_multi_hot():
    logits = torch.tensor([[[2.0, 0.0, 0.0]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    labels = torch.tensor([[1, 1, 0]])
    logp = torch.log_softmax(torch.tensor([2.0, 0.0, 0.0]), 0)
    expected = -(0.5 * logp[0] + 0.5 * logp[1])
    assert mil_loss(logits, valid, labels, a=1).item() == pytest.approx(expected.item())


def test_bad_set_selection():
    c = 3
    confident_right = [8.0, 0.0, 0.0]   # H small, argmax 0 ∈ labels → good
    confident_wrong = [0.0, 8.0, 0.0]   # H small, argmax 1 ∉ labels → bad
    uncertain = [0.1, 0.0, 0.05]         # H ≈ log 3 > τ → bad
    teacher = torch.tensor([[confident_right, confident_wrong, uncertain, confident_right]])
    valid = torch.tensor([[True, True, True, False]])
    labels = torch.tensor([[1, 0, 0]])
    bad = bad_masks(teacher, valid, labels, tau=0.5 * math.log(c))
    assert bad.tolist() == [[False, True, True, False]]


def test_uncertainty_loss_and_lambda_weighting():
    student = torch.tensor([[[0.0, 0.0], [3.0, -3.0]]])
    bad = torch.tensor([[True, False]])
    # only the first mask: −(log ½ + log ½) = 2 log 2
    assert uncertainty_loss(student, bad).item() == pytest.approx(2 * math.log(2))
    assert uncertainty_loss(student, torch.zeros_like(bad)).item() == 0.0
    teacher = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])  # first mask uncertain → bad
    valid = torch.ones(1, 2, dtype=torch.bool)
    labels = torch.tensor([[1, 0]])
    loss, parts = student_loss(student, teacher, valid, labels, a=1, tau=0.5, lambda_mil=1.0, lambda_unc=0.15)
    expected = parts["mil"] + 0.15 * 2 * math.log(2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert parts["bad_fraction"] == 0.5
    loss2, _ = student_loss(student, teacher, valid, labels, a=1, tau=0.5, lambda_mil=2.0, lambda_unc=0.0)
    assert loss2.item() == pytest.approx(2 * parts["mil"], rel=1e-5)


def test_mil_head_learns_instance_classes_from_bag_labels():
    """Bags of 20 instances: 3 from the bag's class distribution, 17 background. Only bag labels
    are seen; the head must classify the positive *instances* correctly."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dim, classes, bags, per_bag, pos = 32, 4, 400, 20, 3
    centres = rng.normal(0, 1, (classes, dim)) * 2.0

    def make(n):
        x = rng.normal(0, 1, (n, per_bag, dim))
        y = rng.integers(0, classes, n)
        truth = np.full((n, per_bag), -1)
        for i in range(n):
            idx = rng.choice(per_bag, pos, replace=False)
            x[i, idx] += centres[y[i]]
            truth[i, idx] = y[i]
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y), truth

    x, y, _ = make(bags)
    labels = torch.nn.functional.one_hot(y, classes)
    valid = torch.ones(bags, per_bag, dtype=torch.bool)
    head = MaskClassifier(dim, classes, hidden=64, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(150):
        for s in range(0, bags, 64):
            loss = mil_loss(head(x[s:s + 64]), valid[s:s + 64], labels[s:s + 64], a=per_bag / pos)
            opt.zero_grad()
            loss.backward()
            opt.step()
    xt, _yt, truth = make(200)
    with torch.no_grad():
        pred = head(xt).argmax(-1).numpy()
    positives = truth >= 0
    accuracy = (pred[positives] == truth[positives]).mean()
    assert accuracy > 0.9  # chance is 0.25
