import math

import numpy as np
import torch

from napari_mousesegment.training.losses import exclusion_loss, masked_dice_loss, mosnet_loss, organ_weights


def test_loss_equals_hand_computation():
    logits = torch.tensor([[[[0.0, 2.0]], [[-1.0, 1.0]]]])  # (B=1, M=2, H=1, W=2)
    target = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    beta = torch.tensor([2.0, 1.0])
    recon, image = torch.tensor([[[[0.5, 0.25]]]]), torch.tensor([[[[0.0, 0.25]]]])
    loss, parts = mosnet_loss(logits, target, torch.tensor([[1, 1]]), beta, recon, image, recon_weight=0.7)

    def sig(v):
        return 1 / (1 + math.exp(-v))

    organ0 = (-2.0 * math.log(sig(0.0)) - math.log(1 - sig(2.0))) / 2  # β=2 on the positive pixel
    organ1 = (-math.log(1 - sig(-1.0)) - math.log(sig(1.0))) / 2
    expected = organ0 + organ1 + 0.7 * (0.25 + 0.0) / 2
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    assert math.isclose(parts["recon"], 0.125, rel_tol=1e-6)


def test_alpha_stops_gradients_for_unannotated_organs():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 5, requires_grad=True)
    target = (torch.rand(3, 4, 5, 5) > 0.5).float()
    annotated = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]])
    loss, _ = mosnet_loss(logits, target, annotated, torch.ones(4))
    loss.backward()
    grad_norm = logits.grad.abs().sum(dim=(2, 3))
    assert torch.all(grad_norm[annotated == 0] == 0)
    assert torch.all(grad_norm[annotated == 1] > 0)


def test_unannotated_organ_predictions_do_not_change_the_loss():
    target = torch.zeros(1, 2, 4, 4)
    annotated = torch.tensor([[1, 0]])
    a = torch.zeros(1, 2, 4, 4)
    b = a.clone()
    b[:, 1] = 50.0  # wildly wrong on the unannotated organ
    assert float(mosnet_loss(a, target, annotated, torch.ones(2))[0]) == float(mosnet_loss(b, target, annotated, torch.ones(2))[0])


def test_dice_term_scores_overlap_of_annotated_organs_only():
    target = torch.zeros(2, 2, 4, 4)
    target[:, 0, :2] = 1.0  # organ 0: the top half of both slices
    right = torch.where(target > 0, 20.0, -20.0)
    wrong = -right
    annotated = torch.tensor([[1, 0], [1, 0]])
    assert float(masked_dice_loss(right, target, annotated)) < 0.01
    assert float(masked_dice_loss(wrong, target, annotated)) > 0.95
    flipped = right.clone()
    flipped[:, 1] = 20.0  # organ 1 fires everywhere, but no dataset here annotates it
    assert float(masked_dice_loss(flipped, target, annotated)) == float(masked_dice_loss(right, target, annotated))
    base, parts = mosnet_loss(wrong, target, annotated, torch.ones(2))
    with_dice, parts_dice = mosnet_loss(wrong, target, annotated, torch.ones(2), dice_weight=2.0)
    assert "dice" not in parts and math.isclose(float(with_dice - base), 2.0 * parts_dice["dice"], rel_tol=1e-5)
    none = torch.zeros(2, 2, dtype=torch.bool)
    assert float(masked_dice_loss(wrong, target, none)) == 0.0


def test_organ_weights_favour_rare_organs():
    beta = organ_weights(np.array([0.25, 0.01, 0.5, 1e-9]))
    assert beta[0] < beta[1] and beta[2] == 1.0 and beta[3] == 30.0
    assert math.isclose(beta[0], math.sqrt(3), rel_tol=1e-6)


def test_exclusion_term_teaches_an_unlabelled_organ_absent_on_the_labelled_ones_only():
    """Organ 1 is not labelled by this dataset: firing on organ 0's pixels costs, on background not."""
    target = torch.zeros(1, 2, 4, 4)
    target[:, 0, :2] = 1.0  # organ 0: the top half
    annotated = torch.tensor([[1, 0]])
    quiet = torch.full((1, 2, 4, 4), -20.0)
    on_background, on_organ = quiet.clone(), quiet.clone()
    on_background[:, 1, 2:] = 20.0
    on_organ[:, 1, :2] = 20.0
    assert float(exclusion_loss(quiet, target, annotated)) < 1e-6
    assert float(exclusion_loss(on_background, target, annotated)) < 1e-6  # maybe organ 1 is there
    assert float(exclusion_loss(on_organ, target, annotated)) > 9.0  # 20 nats on half the pixels
    assert float(exclusion_loss(on_organ, target, torch.tensor([[1, 1]]))) == 0.0  # labelled: BCE's job
    base, parts = mosnet_loss(on_organ, target, annotated, torch.ones(2))
    total, parts_x = mosnet_loss(on_organ, target, annotated, torch.ones(2), exclusion_weight=0.5)
    assert "exclusion" not in parts
    assert math.isclose(float(total - base), 0.5 * parts_x["exclusion"], rel_tol=1e-5)
