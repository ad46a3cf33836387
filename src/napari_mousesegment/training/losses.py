"""MOSnet's loss (eqs. 6-9): organ-masked, frequency-weighted BCE plus λ·MSE of the reconstruction."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

RECON_WEIGHT = 0.7  #: λ, the paper's best value (its Fig. 4c)


def organ_weights(positive_fraction: np.ndarray, cap: float = 30.0) -> np.ndarray:
    """β per organ from label frequencies: sqrt(negatives / positives), between 1 and ``cap``.

    Rare, small organs (bladder, spleen) get more weight on their positive pixels than large ones
    (liver, lungs); the square root keeps rare organs from drowning the rest.
    """
    f = np.clip(np.asarray(positive_fraction, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.clip(np.sqrt((1 - f) / f), 1.0, cap).astype(np.float32)


def mosnet_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    annotated: torch.Tensor,
    beta: torch.Tensor,
    recon: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    recon_weight: float = RECON_WEIGHT,
    dice_weight: float = 0.0,
    exclusion_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = Σ_i α_i·BCE_β(ŷ_i, y_i) + λ·MSE(recon, image) [+ w·soft Dice loss] [+ e·exclusion].

    ``dice_weight`` w > 0 adds the soft Dice loss of each organ over the batch, averaged over the
    organs the batch's datasets annotate (not part of the paper's loss; see :func:`masked_dice_loss`).
    ``exclusion_weight`` e > 0 adds :func:`exclusion_loss` (nor is that the paper's).

    Parameters
    ----------
    logits, target : (B, M, H, W)
        Per-organ logits and binary masks.
    annotated : (B, M)
        α: 1 where the sample's dataset annotates organ i, else 0. Unannotated organs contribute
        neither loss nor gradient (with ``exclusion_weight`` 0): what the model says there is
        never counted as wrong.
    beta : (M,)
        Weight of each organ's positive pixels (eq. 7).
    recon, image : (B, 1, H, W) or None
        Reconstruction and the input it reconstructs.

    Returns
    -------
    loss, parts : the scalar loss and its "seg", "recon" (and "dice", "exclusion") parts as floats.
    """
    pos_weight = beta.to(logits.dtype)[None, :, None, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=pos_weight,
                                             reduction="none").mean(dim=(2, 3))  # (B, M)
    alpha = annotated.to(bce.dtype)
    seg = (bce * alpha).sum(dim=1).mean()
    parts = {"seg": float(seg.detach())}
    loss = seg
    if recon is not None:
        mse = F.mse_loss(recon.float(), image.float())
        loss = loss + recon_weight * mse
        parts["recon"] = float(mse.detach())
    if dice_weight:
        dice = masked_dice_loss(logits, target, annotated)
        loss = loss + dice_weight * dice
        parts["dice"] = float(dice.detach())
    if exclusion_weight:
        excl = exclusion_loss(logits, target, annotated)
        loss = loss + exclusion_weight * excl
        parts["exclusion"] = float(excl.detach())
    return loss, parts


def exclusion_loss(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """BCE toward "absent" of each organ a slice's dataset does not annotate, on the pixels that
    dataset labels as one of its own organs; summed over organs, averaged over slices.

    Organs never overlap, so a pixel labelled liver is known not to be stomach even in a dataset
    that never labels stomach. Without this, an organ learnt in one condition only is free to
    claim another condition's organs (the exclusion loss of Shi et al. 2021, Med. Image Anal. 70,
    for partially labelled multi-organ data, there on softmax outputs; here on each organ's sigmoid).
    """
    alpha = annotated.to(logits.dtype)[:, :, None, None]
    known = (target.to(logits.dtype) * alpha).amax(dim=1, keepdim=True)  # (B, 1, H, W): some own organ
    weight = (1 - alpha) * known
    bce = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (bce * weight).mean(dim=(2, 3)).sum(dim=1).mean()


def masked_dice_loss(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor,
                     smooth: float = 1.0) -> torch.Tensor:
    """Mean over the annotated organs of 1 − soft Dice, each organ pooled over the batch.

    Pixels of slices whose dataset does not annotate an organ count neither way (α = 0). Unlike the
    per-pixel BCE, every organ weighs the same whatever its size, which is what the small organs
    need early in a short run.
    """
    a = annotated.to(logits.dtype)[:, :, None, None]
    prob = torch.sigmoid(logits) * a
    truth = target.to(logits.dtype) * a
    inter = (prob * truth).sum(dim=(0, 2, 3))
    dice = (2 * inter + smooth) / (prob.sum(dim=(0, 2, 3)) + truth.sum(dim=(0, 2, 3)) + smooth)
    organs = annotated.any(0)
    return (1 - dice[organs]).mean() if organs.any() else logits.sum() * 0


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5,
                  smooth: float = 1.0) -> torch.Tensor:
    """The ultrasound U-Nets' loss: α·(1 − soft Dice) + (1 − α)·BCE, over the whole batch."""
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = (2 * inter + smooth) / (prob.sum() + target.sum() + smooth)
    return alpha * (1 - dice) + (1 - alpha) * F.binary_cross_entropy_with_logits(logits, target)
