"""The soft Dice term of the default recipe's loss (losses.soft_dice_loss, WeightedCrossEntropyAndDice,
training_loss) against a float64 NumPy oracle; gradients against autograd of that oracle in float64."""
import numpy as np
import pytest
import torch

from unet_fast.losses import WeightedCrossEntropyAndDice, WeightedSoftmaxCrossEntropy, soft_dice_loss, training_loss
from unet_fast.ops import weighted_softmax_cross_entropy


def oracle(logits: np.ndarray, target: np.ndarray, ignore_index: int = -100, smooth: float = 1.0) -> float:
    """1 - mean over classes 1..C-1 of (2 sum p t + smooth) / (sum p + sum t + smooth), written out."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    valid = target != ignore_index
    scores = []
    for c in range(1, logits.shape[1]):
        p = np.where(valid, probabilities[:, c], 0.0)
        t = (target == c) & valid
        scores.append((2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth))
    return 1 - float(np.mean(scores))


def _inputs(n, c, h, w, seed=0, ignored=0.1):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, c, h, w))
    target = rng.integers(0, c, (n, h, w))
    target[rng.random((n, h, w)) < ignored] = -100
    return logits, target


@pytest.mark.parametrize("n, c, h, w", [(1, 2, 5, 7), (2, 2, 13, 6), (3, 3, 9, 11), (2, 5, 4, 4)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_soft_dice_matches_the_oracle_and_its_gradient(n, c, h, w, layout):
    logits, target = _inputs(n, c, h, w, seed=n * 100 + c)
    x = torch.tensor(logits, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":                      # a non-contiguous view: H and W swapped back
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    x.requires_grad_(True)
    t = torch.tensor(target)
    loss = soft_dice_loss(x, t)
    assert loss.dtype == torch.float64
    np.testing.assert_allclose(loss.item(), oracle(logits, target), rtol=1e-12)
    loss.backward()
    # the gradient: autograd of the oracle's formula in float64, written independently with torch ops
    y = torch.tensor(logits, requires_grad=True)
    p = torch.softmax(y, 1)
    valid = (t != -100)
    scores = []
    for k in range(1, c):
        pk = torch.where(valid, p[:, k], torch.zeros(()))
        tk = ((t == k) & valid).double()
        scores.append((2 * (pk * tk).sum() + 1) / (pk.sum() + tk.sum() + 1))
    (1 - torch.stack(scores).mean()).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
    # float32 logits: float32 arithmetic, the same value within its rounding
    np.testing.assert_allclose(soft_dice_loss(x.detach().float(), t).item(), oracle(logits, target), rtol=1e-5)



@pytest.mark.parametrize("c, ignore_index", [(3, 2), (3, 0), (2, 1)])
def test_an_ignore_index_that_is_a_class_leaves_its_pixels_out_of_every_sum(c, ignore_index):
    """The target of an ignored pixel used to count as truth of the class ignore_index names (probabilities
    were masked, truth not): ignoring class 2 of 3 scored its Dice against pixels the loss was told to leave out."""
    logits, target = _inputs(2, c, 9, 8, seed=11, ignored=0)
    target[:, :3] = ignore_index
    loss = soft_dice_loss(torch.tensor(logits), torch.tensor(target), ignore_index=ignore_index)
    assert loss.item() == pytest.approx(oracle(logits, target, ignore_index), rel=1e-12)


@pytest.mark.parametrize("ignore_index", [-100, -1, 256, -256])
def test_uint8_targets_compare_with_ignore_index_unwrapped(ignore_index):
    """torch compares a uint8 tensor with an int wrapped mod 256: ignore_index 256 (-256) matched class 0, -1
    matched 255, -100 matched 156, and those pixels were left out of the Dice sums although no pixel is ignored."""
    logits, target = _inputs(2, 3, 9, 8, seed=12, ignored=0)
    want = oracle(logits, target, ignore_index)
    wide = torch.tensor(target)
    assert soft_dice_loss(torch.tensor(logits), wide.to(torch.uint8), ignore_index=ignore_index).item() == \
        pytest.approx(want, rel=1e-12)
    assert soft_dice_loss(torch.tensor(logits), wide, ignore_index=ignore_index).item() == \
        pytest.approx(want, rel=1e-12)


def test_soft_dice_known_values():
    target = torch.tensor([[[0, 1], [1, 1]]])
    sure = torch.stack([(target == 0).double(), (target == 1).double()], 1) * 60 - 30   # softmax ~ one-hot
    assert soft_dice_loss(sure, target).item() == pytest.approx(0.0, abs=1e-12)
    wrong = -sure
    # no overlap: 1 - (0 + 1) / (1 + 3 + 1)
    assert soft_dice_loss(wrong, target).item() == pytest.approx(1 - 1 / 5, abs=1e-12)
    # every pixel ignored: sums are empty, the loss is 0 and its gradient 0, not NaN
    ignored = torch.full_like(target, -100)
    x = sure.clone().requires_grad_(True)
    loss = soft_dice_loss(x, ignored)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


def test_soft_dice_bad_shapes():
    with pytest.raises(ValueError, match=r"logits must be \[N, C, h, w\] with C >= 2"):
        soft_dice_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must be \[N, h, w\] = \(1, 4, 4\)"):
        soft_dice_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long))


@pytest.mark.parametrize("dice", [0.0, 0.5, 2.0])
def test_cross_entropy_and_dice_is_their_sum_on_the_cropped_target(dice):
    """A valid U-Net's logits are smaller than the tile: target and weights are cropped to them for both terms."""
    rng = np.random.default_rng(7)
    logits = torch.tensor(rng.normal(0, 2, (2, 2, 6, 8)), dtype=torch.float32)
    target = torch.tensor(rng.integers(0, 2, (2, 10, 12)))
    weight = torch.tensor(rng.random((2, 10, 12)) + 0.5, dtype=torch.float32)
    loss = WeightedCrossEntropyAndDice(dice, crop_to_logits=True)(logits, target, weight)
    cropped = target[:, 2:8, 2:10]
    expected = weighted_softmax_cross_entropy(logits, cropped, weight[:, 2:8, 2:10]) \
        + dice * oracle(logits.double().numpy(), cropped.numpy())
    torch.testing.assert_close(loss, expected.float(), rtol=1e-5, atol=1e-6)
    if dice == 0:
        assert torch.equal(loss, WeightedSoftmaxCrossEntropy(crop_to_logits=True)(logits, target, weight))


def test_bad_dice_weights_and_targets_are_refused():
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="dice must be a number >= 0"):
            WeightedCrossEntropyAndDice(bad)
    loss = WeightedCrossEntropyAndDice(1.0)
    with pytest.raises(Exception, match="target"):        # a class the logits do not have: the cross-entropy says so
        loss(torch.zeros(1, 2, 3, 3), torch.full((1, 3, 3), 5))


def test_training_loss_follows_the_recipe():
    assert type(training_loss(0.0)) is WeightedSoftmaxCrossEntropy and training_loss(0.0).crop_to_logits
    combined = training_loss(1.0)
    assert isinstance(combined, WeightedCrossEntropyAndDice) and combined.dice == 1.0
    assert combined.cross_entropy.crop_to_logits
