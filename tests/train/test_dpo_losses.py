"""DPO, IPO and conservative DPO equal hand-computed values on fixed log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from foundry.train.preference import cdpo_loss, dpo_loss, ipo_loss, preference_loss, sequence_logps

# pair 0: policy (-1, -3), reference (-2, -2.5) -> chosen log-ratio 1.0, rejected -0.5, h = 1.5
# pair 1: policy equals reference -> h = 0
PC, PR = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -6.0])
RC, RR = torch.tensor([-2.0, -4.0]), torch.tensor([-2.5, -6.0])


def test_dpo_hand_computed():
    losses, cr, rr = dpo_loss(PC, PR, RC, RR, beta=0.5)
    # -log sigmoid(0.5 * 1.5) = log(1 + e^-0.75) = 0.3868715...
    assert losses.tolist() == pytest.approx([0.38687153, math.log(2)], abs=1e-6)
    assert cr.tolist() == pytest.approx([0.5, 0.0]) and rr.tolist() == pytest.approx([-0.25, 0.0])


def test_cdpo_hand_computed():
    losses, cr, rr = cdpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.2)
    # 0.8 * log(1 + e^-0.75) + 0.2 * log(1 + e^0.75) = 0.8 * 0.3868715 + 0.2 * 1.1368715
    assert losses.tolist() == pytest.approx([0.53687153, math.log(2)], abs=1e-6)
    # eps = 0 is plain DPO
    assert cdpo_loss(PC, PR, RC, RR, 0.5, 0.0)[0].tolist() == pytest.approx(dpo_loss(PC, PR, RC, RR, 0.5)[0].tolist())
    assert cr.tolist() == pytest.approx([0.5, 0.0]) and rr.tolist() == pytest.approx([-0.25, 0.0])


def test_ipo_hand_computed():
    losses, cr, rr = ipo_loss(PC, PR, RC, RR, beta=0.5)
    # (h - 1/(2*0.5))^2: (1.5 - 1)^2 = 0.25 and (0 - 1)^2 = 1
    assert losses.tolist() == pytest.approx([0.25, 1.0])
    assert preference_loss("ipo", PC, PR, RC, RR, beta=0.5)[0].tolist() == pytest.approx([0.25, 1.0])


def test_gradient_direction_raises_chosen_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    for fn in (dpo_loss, ipo_loss, cdpo_loss):
        pc.grad = pr.grad = None
        fn(pc, pr, RC, RR, 0.5)[0][1].backward()  # pair 1 sits at h = 0: every variant wants h up
        assert pc.grad[1] < 0 < pr.grad[1]


def test_sequence_logps_sum_and_average():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]]))
    targets = torch.tensor([[0, 2, -100]])
    assert sequence_logps(logits, targets).item() == pytest.approx(math.log(0.5) + math.log(0.8), abs=1e-6)
    assert sequence_logps(logits, targets, average=True).item() == pytest.approx(
        (math.log(0.5) + math.log(0.8)) / 2, abs=1e-6)


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="unknown preference loss"):
        preference_loss("kto", PC, PR, RC, RR, 0.1)
