import math

import numpy as np
import torch

from napari_mousesegment.training.losses import mosnet_loss, organ_weights


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


def test_organ_weights_favour_rare_organs():
    beta = organ_weights(np.array([0.25, 0.01, 0.5, 1e-9]))
    assert beta[0] < beta[1] and beta[2] == 1.0 and beta[3] == 30.0
    assert math.isclose(beta[0], math.sqrt(3), rel_tol=1e-6)
