"""An inference-only copy of a network, arranged for speed.

Batch norm in eval mode is an affine map, so it folds into the convolution before it (one pass
over the activations instead of two), and channels-last is the layout oneDNN and cuDNN run
convolutions fastest in. The copy leaves the trained model untouched, so training, fine-tuning
and saving keep working on the original.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _leading_norm(module: nn.Module) -> tuple[nn.Module, str] | None:
    """The BatchNorm2d that a Sequential ``module`` starts with, as (parent, attribute name)."""
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], nn.BatchNorm2d):
        return module, "0"
    return None


def _fold(module: nn.Module) -> None:
    for child in module.children():
        _fold(child)
    if not isinstance(module, nn.Sequential):
        return
    names = [name for name, _ in module.named_children()]
    for name, after in itertools.pairwise(names):
        conv, norm = getattr(module, name), getattr(module, after)
        if not isinstance(conv, nn.Conv2d):
            continue
        if isinstance(norm, nn.BatchNorm2d):
            parent, attribute = module, after
        elif (found := _leading_norm(norm)) is not None:
            parent, attribute = found
        else:
            continue
        setattr(module, name, fuse_conv_bn_eval(conv, getattr(parent, attribute)))
        setattr(parent, attribute, nn.Identity())


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with batch norm folded into its convolutions, channels-last.

    Gives the same outputs as ``model.eval()`` up to float rounding; gradients are not needed.
    """
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        _fold(folded)
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    return folded.to(memory_format=torch.channels_last)
