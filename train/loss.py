"""Contrastive losses over features gathered from every rank, gradients flowing through the gather.

Each rank computes its local rows against all columns (``n_local × N`` logits, not ``N × N``):
the mean of the ranks' losses equals the single-process loss on the concatenated batch, and, since
the gather's backward sums every rank's gradient into the owner's slice, the data-parallel average
of the parameter gradients equals the single-process gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward returns this rank's slice of the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.world = dist.get_world_size()
        ctx.rank = dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        n = grad.shape[0] // ctx.world
        if dist.get_backend() == "nccl":
            out = torch.empty((n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad)
            return out
        # gloo has no reduce_scatter: all-reduce and keep our slice (2x traffic, fine on CPU)
        dist.all_reduce(grad)
        return grad[ctx.rank * n : (ctx.rank + 1) * n]


def gather_features(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate ``x`` over ranks (rank order); identity when not distributed."""
    if world_size <= 1:
        return x
    return _GatherWithGrad.apply(x)


class _RankAwareLoss(nn.Module):
    """A loss over this rank's rows; ``rank`` places them among the gathered columns."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def forward(
        self,
        image_features: torch.Tensor,  # [n_local, d], normalised
        text_features: torch.Tensor,  # [n_local, d], normalised
        logit_scale: torch.Tensor,  # [] (already exp'd)
        logit_bias: torch.Tensor | None = None,  # [] (SigLIP only)
    ) -> torch.Tensor:
        """The loss of this rank's rows; the mean over ranks is the loss of the whole batch."""
        return self.local_loss(image_features, text_features, logit_scale, logit_bias)

    def local_loss(self, image_features, text_features, logit_scale, logit_bias) -> torch.Tensor:
        raise NotImplementedError


class ClipLoss(_RankAwareLoss):
    """Symmetric cross-entropy of CLIP over local rows × gathered columns."""

    def local_loss(self, image_features, text_features, logit_scale, logit_bias) -> torch.Tensor:
        n = image_features.shape[0]
        all_image = gather_features(image_features, self.world_size)
        all_text = gather_features(text_features, self.world_size)
        # fp32 logits: bf16 softmax over tens of thousands of columns loses the positives' precision
        logits_per_image = logit_scale.float() * image_features.float() @ all_text.float().T
        logits_per_text = logit_scale.float() * text_features.float() @ all_image.float().T
        labels = torch.arange(n, device=image_features.device) + self.rank * n
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class SigLipLoss(_RankAwareLoss):
    """Sigmoid loss (Zhai et al. 2023): every pair an independent binary decision, ``-Σ log σ(z·logit)/n``.

    Local images against gathered texts; the mean over ranks equals the single-process loss.
    """

    def local_loss(self, image_features, text_features, logit_scale, logit_bias) -> torch.Tensor:
        n = image_features.shape[0]
        all_text = gather_features(text_features, self.world_size)
        logits = logit_scale.float() * image_features.float() @ all_text.float().T
        if logit_bias is not None:
            logits = logits + logit_bias.float()
        labels = -torch.ones_like(logits)
        idx = torch.arange(n, device=logits.device)
        labels[idx, idx + self.rank * n] = 1.0
        return -F.logsigmoid(labels * logits).sum() / n


def make_loss(kind: str, rank: int = 0, world_size: int = 1) -> nn.Module:
    """``clip`` or ``siglip``."""
    if kind == "clip":
        return ClipLoss(rank, world_size)
    if kind == "siglip":
        return SigLipLoss(rank, world_size)
    raise ValueError(f"unknown loss {kind!r}; use 'clip' or 'siglip'")
