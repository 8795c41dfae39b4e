"""The AMC pieces: gathers, the bas/area/foreground terms, the frozen tail and the loss."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bas.amc import (
    GeneratorOutput,
    area_term,
    bas_loss,
    bas_term,
    foreground_score,
    frozen_call,
    mean_class_map,
    pick,
)


def small_tail() -> nn.Sequential:
    """A tail with BatchNorm, like ResNet's layer4 followed by a class conv."""
    return nn.Sequential(
        nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, 5, 1)
    )


def test_pick_equals_loop():
    tensor, classes = torch.randn(4, 7, 3, 3), torch.tensor([6, 0, 3, 3])
    expected = torch.stack([tensor[i, classes[i]] for i in range(4)])
    assert torch.equal(pick(tensor, classes), expected)


def test_mean_class_map_equals_loop():
    maps, classes = torch.rand(3, 6, 5, 5), torch.tensor([[0, 5], [2, 2], [4, 1]])
    expected = torch.stack([maps[i][classes[i]].mean(0, keepdim=True) for i in range(3)])
    assert torch.allclose(mean_class_map(maps, classes), expected)


def test_bas_term_hand_made():
    s = torch.tensor([2.0, 1.0, -1.0, 3.0])
    s_bg = torch.tensor([1.0, 2.0, 0.5, -1.0], requires_grad=True)
    # relu: S = [2, 1, 0, 3], S_bg = [1, 2, 0.5, 0]; saturated where S_bg > S (2nd, 3rd).
    bas = bas_term(s, s_bg, saturated=1.0)
    assert torch.allclose(bas, torch.tensor([0.5, 1.0, 1.0, 0.0]))
    assert torch.allclose(bas_term(s, s_bg, saturated=0.0), torch.tensor([0.5, 0.0, 0.0, 0.0]))
    bas.sum().backward()
    # d/dS_bg of relu(S_bg)/S: 1/2 in the ratio regime, 0 where saturated or S_bg < 0.
    assert torch.allclose(s_bg.grad, torch.tensor([0.5, 0.0, 0.0, 0.0]))


def test_bas_term_treats_score_as_constant():
    s = torch.tensor([2.0], requires_grad=True)
    bas_term(s, torch.tensor([1.0], requires_grad=True), 1.0).sum().backward()
    assert s.grad is None


def test_area_and_foreground_score_hand_made():
    fg_map = torch.zeros(1, 1, 4, 4)
    fg_map[..., :2, :2] = 1.0  # the top-left quarter
    assert area_term(fg_map).item() == pytest.approx(0.25)
    class_map = torch.arange(8.0).view(1, 2, 2, 2)  # class 0: [[0, 1], [2, 3]]
    # 2x2 average pool of the map: [[1, 0], [0, 0]] -> only the top-left cell counts.
    assert torch.allclose(foreground_score(class_map, fg_map), torch.tensor([[0.0, 4.0]]) / 4)


def test_foreground_score_pool_equals_original_avg_pool():
    class_map, fg_map = torch.randn(2, 3, 14, 14), torch.rand(2, 1, 28, 28)
    expected = (class_map * F.avg_pool2d(fg_map, 2)).mean((2, 3))
    assert torch.allclose(foreground_score(class_map, fg_map), expected, atol=1e-6)


@pytest.mark.parametrize("train", [True, False])
def test_frozen_call_equals_deep_copy(train):
    tail = small_tail().train(train)
    tail[1].running_mean.uniform_(-1, 1)
    tail[1].running_var.uniform_(0.5, 2)
    before = copy.deepcopy(tail.state_dict())
    x = torch.randn(4, 6, 7, 7, requires_grad=True)
    x_copy = x.detach().clone().requires_grad_(True)

    frozen = frozen_call([tail[:3], tail[3:]], x)
    reference = copy.deepcopy(tail)(x_copy)
    assert torch.allclose(frozen, reference, atol=1e-6)

    frozen.square().sum().backward()
    reference.square().sum().backward()
    assert torch.allclose(x.grad, x_copy.grad, atol=1e-5)
    assert all(p.grad is None for p in tail.parameters()), "no gradient may reach the tail's weights"
    for name, value in tail.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed in the frozen pass"


def test_bas_loss_hand_made():
    labels = torch.tensor([0, 1])
    out = GeneratorOutput(
        score=torch.zeros(2, 4),  # CE = log 4
        fg_map=torch.zeros(2, 1, 2, 2),
        score_fg=torch.tensor([[math.log(3.0), 0, 0, 0], [0, 0, 0, 0]]),  # CE = (log 2 + log 4) / 2
        bas=torch.tensor([0.2, 0.4]),
        area=torch.tensor([0.5, 0.1]),
    )
    total, parts = bas_loss(out, labels, alpha=0.5, beta=2.0)
    ce_fg = (math.log(2.0) + math.log(4.0)) / 2
    assert parts["ce"].item() == pytest.approx(math.log(4.0))
    assert parts["ce_fg"].item() == pytest.approx(ce_fg)
    assert total.item() == pytest.approx(math.log(4.0) + 0.5 * ce_fg + 0.3 + 2.0 * 0.3)


def test_bas_loss_cross_entropy_only_when_no_amc_terms():
    out = GeneratorOutput(score=torch.zeros(3, 5), fg_map=torch.zeros(3, 1, 2, 2))
    total, parts = bas_loss(out, torch.tensor([0, 1, 2]), alpha=0.5, beta=1.5)
    assert set(parts) == {"ce"}
    assert total.item() == pytest.approx(math.log(5.0))
