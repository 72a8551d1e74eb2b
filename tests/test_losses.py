"""btseg.training.losses: soft Dice and BCE + Dice on logits, with exact values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from btseg.training.losses import bce_dice_loss, soft_dice_loss


def circle(size: int = 16, radius: float = 5.0) -> torch.Tensor:
    """(1, 1, size, size) 0/1 float mask of a centred disc."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (size - 1) / 2
    return (((y - centre) ** 2 + (x - centre) ** 2) <= radius**2).float()[None, None]


CONFIDENCE = 20.0  # sigmoid(20) = 1 - 2e-9


def test_soft_dice_near_zero_for_confident_correct_logits():
    target = circle()
    logits = CONFIDENCE * (2 * target - 1)
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_dice_near_one_for_confident_wrong_logits():
    target = circle()
    logits = -CONFIDENCE * (2 * target - 1)
    # probabilities are the complement of the target: dice = (0 + 1) / (H*W + 1) = 1/257
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 1 / 257, abs=1e-6)


@pytest.mark.parametrize(
    "logit, expected",
    [
        (-CONFIDENCE, 0.0),  # all background on an empty mask: (0 + 1) / (0 + 0 + 1) = 1 -> loss 0
        (0.0, 2 / 3),  # p = 0.5 on 4 pixels: dice = 1 / (2 + 0 + 1) = 1/3 -> loss 2/3
        (CONFIDENCE, 4 / 5),  # p = 1 on 4 pixels: dice = 1 / (4 + 0 + 1) -> loss 4/5
    ],
)
def test_soft_dice_empty_target_is_finite(logit, expected):
    target = torch.zeros(1, 1, 2, 2)
    loss = soft_dice_loss(torch.full((1, 1, 2, 2), logit), target)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_soft_dice_hand_computed_and_averaged_over_batch():
    # image 0: p = 0.5 everywhere, target has 2 of 4 pixels -> intersection 1,
    #          dice = (2*1 + 1) / (2 + 2 + 1) = 3/5 -> loss 2/5
    # image 1: p = 0.5 everywhere, empty target -> dice 1/3 -> loss 2/3
    # batch loss = 1 - mean(dice) = 1 - (3/5 + 1/3)/2 = 8/15
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    logits = torch.zeros(2, 1, 2, 2)
    assert soft_dice_loss(logits[:1], target[:1]).item() == pytest.approx(2 / 5)
    assert soft_dice_loss(logits, target).item() == pytest.approx(8 / 15)


def test_soft_dice_smooth_parameter():
    # p = 0.5 on 4 pixels, target 2 pixels, smooth 0: dice = 2*1 / (2 + 2) = 1/2
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert soft_dice_loss(torch.zeros(1, 1, 2, 2), target, smooth=0.0).item() == pytest.approx(0.5)


def test_soft_dice_accepts_integer_and_bool_targets():
    target = circle()
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    expected = soft_dice_loss(logits, target)
    assert soft_dice_loss(logits, target.long()).item() == pytest.approx(expected.item())
    assert soft_dice_loss(logits, target.bool()).item() == pytest.approx(expected.item())


def _random_batch():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 1, 8, 8, generator=generator)
    target = (torch.rand(3, 1, 8, 8, generator=generator) < 0.3).float()
    return logits, target


def test_bce_dice_weight_zero_is_bce_with_logits():
    logits, target = _random_batch()
    expected = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(bce_dice_loss(logits, target, dice_weight=0.0), expected)


def test_bce_dice_weight_one_is_soft_dice():
    logits, target = _random_batch()
    torch.testing.assert_close(bce_dice_loss(logits, target, dice_weight=1.0), soft_dice_loss(logits, target))


def test_bce_dice_weight_mixes_linearly():
    logits, target = _random_batch()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dice = soft_dice_loss(logits, target)
    torch.testing.assert_close(bce_dice_loss(logits, target, dice_weight=0.25), 0.75 * bce + 0.25 * dice)
    torch.testing.assert_close(bce_dice_loss(logits, target), 0.5 * bce + 0.5 * dice)  # default 0.5


def test_bce_dice_accepts_integer_target():
    logits, target = _random_batch()
    torch.testing.assert_close(bce_dice_loss(logits, target.long()), bce_dice_loss(logits, target))


@pytest.mark.parametrize("loss_fn", [soft_dice_loss, bce_dice_loss], ids=["soft_dice", "bce_dice"])
def test_gradient_flows_and_points_towards_the_target(loss_fn):
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss_fn(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # raising a tumor pixel's logit, or lowering a background pixel's, lowers the loss
    assert (logits.grad[target.bool()] < 0).all()
    assert (logits.grad[~target.bool()] > 0).all()


@pytest.mark.parametrize("loss_fn", [soft_dice_loss, bce_dice_loss], ids=["soft_dice", "bce_dice"])
def test_gradient_finite_on_empty_target(loss_fn):
    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    loss = loss_fn(logits, torch.zeros(2, 1, 4, 4))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad > 0).all()  # nothing to find: every logit should go down


# --- the loss family chosen by params ---------------------------------------------------------

def _random_pair(seed: int = 0, shape=(2, 3, 8, 8)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), (torch.rand(shape, generator=generator) > 0.6).float()


def test_tversky_with_equal_weights_and_no_smoothing_is_soft_dice():
    from btseg.training.losses import soft_dice_loss, tversky_loss

    logits, target = _random_pair()
    torch.testing.assert_close(tversky_loss(logits, target, 0.5, 0.5, smooth=0.0),
                               soft_dice_loss(logits, target, smooth=0.0))


def test_tversky_beta_penalises_missed_tumor_more():
    from btseg.training.losses import tversky_loss

    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1
    miss = torch.full((1, 1, 4, 4), -10.0)  # predicts nothing: 8 false negatives
    alarm = torch.full((1, 1, 4, 4), 10.0)  # predicts everything: 8 false positives
    assert tversky_loss(miss, target, 0.3, 0.7) > tversky_loss(alarm, target, 0.3, 0.7)


def test_focal_with_gamma_zero_is_bce_and_gamma_down_weights_easy_pixels():
    from btseg.training.losses import focal_loss

    logits, target = _random_pair(1)
    torch.testing.assert_close(focal_loss(logits, target, 0.0), F.binary_cross_entropy_with_logits(logits, target))
    assert focal_loss(logits, target, 2.0) < focal_loss(logits, target, 0.0)


def test_dice_batch_reduction_pools_pixels_of_the_batch():
    from btseg.training.losses import soft_dice_loss

    logits = torch.tensor([[[[10.0, -10.0]]], [[[-10.0, -10.0]]]])  # image 0 right, image 1 predicts nothing
    target = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])
    # per image: image 0 Dice ~1, image 1 Dice ~(0+1)/(1+1) = 0.5 with smooth 1 -> loss ~0.25
    assert soft_dice_loss(logits, target, 1.0, "image").item() == pytest.approx(0.25, abs=1e-3)
    # pooled: tp 1, fp 0, fn 1 -> Dice (2+1)/(3+1) = 0.75 -> loss 0.25 too; without smoothing 2/3 -> 1/3
    assert soft_dice_loss(logits, target, 0.0, "batch").item() == pytest.approx(1 / 3, abs=1e-3)


def test_deep_supervision_loss_weights_halve_per_level():
    from btseg.training.losses import Loss

    loss = Loss("bce")
    target = torch.ones(1, 1, 4, 4)
    outputs = [torch.zeros(1, 1, 4, 4), torch.full((1, 1, 2, 2), 10.0)]  # BCE log 2, then ~0
    expected = (1.0 * math.log(2) + 0.5 * loss(outputs[1], torch.ones(1, 1, 2, 2)).item()) / 1.5
    assert loss.deep(outputs, target).item() == pytest.approx(expected, rel=1e-6)


def test_unknown_loss_name_lists_the_valid_ones():
    from btseg.training.losses import Loss

    with pytest.raises(ValueError, match="unknown loss 'dicee'; expected one of"):
        Loss("dicee")
