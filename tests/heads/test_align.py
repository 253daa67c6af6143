"""FMbSeg's alignment module and TSupCon: a hand-worked case, a plain-loop reference, finite
gradients, and the module learning to put separable features next to their prototypes."""

import math

import pytest
import torch
import torch.nn.functional as F

from usam_ray.heads.align import AlignmentHead, label_patches, tsupcon


def tsupcon_loop(z, labels, text, tau, balanced=False):
    """TSupCon as the paper's sums read, one patch at a time (``balanced``: the text terms' mean plus
    the patch terms' sum over the patches)."""
    m, k = len(z), len(text)

    def denom(i):
        return math.log(sum(math.exp(float(z[i] @ text[c]) / tau) for c in range(k))
                        + sum(math.exp(float(z[i] @ z[j]) / tau) for j in range(m) if j != i))

    texts, patches = [], []
    for c in range(k):
        members = [i for i in range(m) if labels[i] == c]
        if members:
            texts.append(sum(-float(z[i] @ text[c]) / tau + denom(i) for i in members) / len(members))
    for i in range(m):
        pos = [p for p in range(m) if p != i and labels[p] == labels[i]]
        if pos:
            patches.append(sum(-float(z[i] @ z[p]) / tau + denom(i) for p in pos) / len(pos))
    if balanced:
        return sum(texts) / len(texts) + sum(patches) / m
    return (sum(texts) + sum(patches)) / (m + k)


def test_hand_worked_case():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # both patches are class 0: D = log(e + 2) for each; text term (D - 1 + D) / 2; patch terms D + D
    expected = (3 * math.log(math.e + 2) - 0.5) / 4
    assert float(tsupcon(z, torch.tensor([0, 0]), text, 1.0)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("balanced", [False, True])
def test_matches_the_plain_loop_and_has_finite_gradients(tau, balanced):
    torch.manual_seed(0)
    z = F.normalize(torch.randn(13, 6), dim=-1).requires_grad_(True)
    text = F.normalize(torch.randn(4, 6), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 1, 3, 0, 1, 3, 3, 0, 1, 2])  # class 2 a singleton: no positives
    loss = tsupcon(z, labels, text, tau, balanced)
    assert loss.item() == pytest.approx(tsupcon_loop(z.detach(), labels, text, tau, balanced), rel=1e-5)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # a class without patches adds no text term, but its prototype stays in every denominator
    no_two = tsupcon(z.detach(), torch.where(labels == 2, 0, labels), text, tau, balanced)
    assert float(no_two) == pytest.approx(
        tsupcon_loop(z.detach(), torch.where(labels == 2, 0, labels), text, tau, balanced), rel=1e-5)


def test_balanced_form_weighs_the_text_as_much_as_the_patches():
    """With 2 prototypes and 200 patches, the paper's form gives the text terms 2/202 of the loss;
    the balanced form gives them as much gradient as the patch clustering."""
    torch.manual_seed(3)
    z = F.normalize(torch.randn(200, 6), dim=-1).requires_grad_(True)
    text = F.normalize(torch.randn(2, 6), dim=-1)
    labels = (torch.arange(200) < 20).long()  # 20 patches of class 1, 180 of class 0

    def text_gradient_share(balanced):
        full = torch.autograd.grad(tsupcon(z, labels, text, 0.1, balanced), z)[0]
        # the text-only part: the patch-prototype similarity terms, the same denominators
        s_zt = z @ text.T / 0.1
        own = s_zt.gather(1, labels[:, None])[:, 0]
        counts = torch.bincount(labels).float()
        text_only = -(own / counts[labels]).sum() / (2 if balanced else 202)
        return torch.autograd.grad(text_only, z)[0].norm() / full.norm()

    assert text_gradient_share(False) < 0.05 < 0.2 < text_gradient_share(True)


@pytest.mark.parametrize("kind", ["linear", "mlp", "block"])
def test_each_module_learns_to_map_patches_to_their_prototypes(kind):
    torch.manual_seed(1)
    k, d, e, n = 3, 16, 8, 12
    centres = torch.randn(k, d) * 2
    text = F.normalize(torch.randn(k, e), dim=-1)

    def batch():
        y = torch.randint(0, k, (4, n))
        return centres[y] + 0.5 * torch.randn(4, n, d), y

    head = AlignmentHead(d, e, kind=kind, heads=2)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    x, y = batch()
    before = (label_patches(head(x), text).argmax(-1) == y).float().mean()
    for _ in range(150):
        x, y = batch()
        loss = tsupcon(head(x).reshape(-1, e), y.reshape(-1), text, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = batch()
    with torch.no_grad():
        z = head(x)
    after = (label_patches(z, text).argmax(-1) == y).float().mean()
    assert torch.allclose(z.norm(dim=-1), torch.ones(4, n), atol=1e-5)
    assert after > 0.9 and after > before


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="'conv'"):
        AlignmentHead(8, 4, kind="conv")
