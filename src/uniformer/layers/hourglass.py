"""Hourglass token pruning, merging and recovery (light UniFormer, derived from Evo-ViT), without hidden state.

The official code keeps token scores and token order in module globals. Here they travel through the forward
pass in a :class:`PruneState`; every block returns new tensors and never mutates its inputs, and token indices
stay ``long`` whatever the feature dtype (fp16 cannot represent indices above 2048 exactly).
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from timm.layers import register_notrace_function, register_notrace_module
from torch.utils.checkpoint import checkpoint

from .common import avg_pool_nd
from .mhra import GlobalBlock, apply_layer_scale

__all__ = ["PruneState", "HourglassBlock", "initial_prune_state", "validate_prune_schedule"]


class PruneState(NamedTuple):  # (no postponed annotations in this file: TorchScript reads these field types)
    """Per-forward bookkeeping: token scores (B, N) (None before the first block) and token order (B, N), long."""

    score: Optional[torch.Tensor]
    index: torch.Tensor


@register_notrace_function  # torch.fx: token counts come from tensor shapes
def initial_prune_state(x: torch.Tensor, score: Optional[torch.Tensor] = None) -> PruneState:
    """State at the entry of a stage whose map is ``x`` (B, C, *spatial): raster token order, given score."""
    B, n = x.shape[0], x[0, 0].numel()
    return PruneState(score, torch.arange(n, device=x.device).unsqueeze(0).expand(B, n))


def _gather(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Reorder dim 1 of ``t`` (B, N[, C]) by ``order`` (B, N)."""
    if t.ndim == 3:
        order = order.unsqueeze(-1).expand(-1, -1, t.shape[-1])
    return torch.gather(t, 1, order)


def validate_prune_schedule(
    depth: Sequence[int], prune_ratio: Sequence[Sequence[float]], trade_off: Sequence[Sequence[float]]
) -> None:
    """Check an hourglass schedule (per-stage lists; stages 1–2 empty) and raise ``ValueError`` if unusable."""
    for name, sched in (("prune_ratio", prune_ratio), ("trade_off", trade_off)):
        if len(sched) != 4:
            raise ValueError(f"{name} needs 4 per-stage lists, got {len(sched)}")
        for stage in (2, 3):
            if len(sched[stage]) != depth[stage]:
                raise ValueError(
                    f"{name}[{stage}] needs one value per block of stage {stage + 1} "
                    f"({depth[stage]} blocks), got {len(sched[stage])}: {list(sched[stage])}"
                )
    for stage in (2, 3):
        for r in prune_ratio[stage]:
            if not 0.0 < r <= 1.0:
                raise ValueError(f"prune_ratio values must be in (0, 1], got {r} in stage {stage + 1}")
    if depth[2] < 2 or prune_ratio[2][0] != 1:
        raise ValueError("stage 3 needs at least 2 blocks and its first block must not prune (prune_ratio 1)")
    if prune_ratio[2][-1] >= 1:
        raise ValueError("the last block of stage 3 must prune (prune_ratio < 1): it pools scores into stage 4")
    if any(r >= 1 for r in prune_ratio[3]):
        raise ValueError("stage-4 blocks must prune (prune_ratio < 1): stage 4 starts with pooled scores")


@register_notrace_module  # torch.fx keeps it a leaf: how many tokens it keeps depends on the input size
class HourglassBlock(GlobalBlock):
    """Global MHRA block with hourglass pruning (official ``EvoSABlock``); same parameters and keys as GlobalBlock.

    ``forward(cls, x, state)`` takes the class token (B, 1, C), the map (B, C, *spatial) and a :class:`PruneState`,
    and returns new ``(cls, x, state)``. ``prune_ratio == 1`` attends over all tokens and initialises/updates the
    scores; ``< 1`` keeps the ``floor(N·ρ)`` best tokens, merges the rest into one representative token, updates
    them all with the representative's change ("fast update") and restores raster order. ``downsample=True`` (last
    block of stage 3) pools the scores onto the next stage's grid, preserving their sum.
    """

    def __init__(self, *args, prune_ratio: float = 1.0, trade_off: float = 1.0, downsample: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.prune_ratio = float(prune_ratio)
        self.trade_off = float(trade_off)
        self.downsample = downsample

    def _attend(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.attn.forward_with_cls_attn(self.norm1(z))

    def forward(  # type: ignore[override]
        self, cls: torch.Tensor, x: torch.Tensor, state: PruneState
    ) -> Tuple[torch.Tensor, torch.Tensor, PruneState]:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(self._prune_forward, cls, x, state, use_reentrant=False)
        return self._prune_forward(cls, x, state)

    def _prune_forward(
        self, cls: torch.Tensor, x: torch.Tensor, state: PruneState
    ) -> Tuple[torch.Tensor, torch.Tensor, PruneState]:
        x = x + self.pos_embed(x)  # DPE on the full map, every block
        shape = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        t = self.trade_off
        if self.prune_ratio >= 1.0:
            z = torch.cat([cls, tokens], dim=1)
            a, cls_attn = self._attend(z)
            c = cls_attn[:, 1:]
            prev = state.score
            score = c if prev is None else (1 - t) * prev + t * c
            z = z + self.drop_path(apply_layer_scale(a, self.gamma_1))
            z = z + self.drop_path(apply_layer_scale(self.mlp(self.norm2(z)), self.gamma_2))
            cls, tokens, index = z[:, :1], z[:, 1:], state.index
        else:
            prev = state.score
            if prev is None:
                raise ValueError("a pruning hourglass block needs scores from an earlier non-pruning block")
            n_keep = int(tokens.shape[1] * self.prune_ratio)
            order = torch.argsort(prev, dim=1, descending=True, stable=True)
            tokens, score, index = _gather(tokens, order), _gather(prev, order), _gather(state.index, order)
            x_info, x_drop = tokens[:, :n_keep], tokens[:, n_keep:]
            s_info, s_drop = score[:, :n_keep], score[:, n_keep:]
            weight = s_drop / s_drop.sum(dim=1, keepdim=True)
            rep = (weight.unsqueeze(-1) * x_drop).sum(dim=1, keepdim=True)
            z = torch.cat([cls, x_info, rep], dim=1)
            a, cls_attn = self._attend(z)
            score = torch.cat([(1 - t) * s_info + t * cls_attn[:, 1:-1], s_drop], dim=1)
            fast = a[:, -1:]
            z = z + self.drop_path(apply_layer_scale(a, self.gamma_1))
            m = self.mlp(self.norm2(z))
            fast = fast + m[:, -1:]
            z = z + self.drop_path(apply_layer_scale(m, self.gamma_2))
            cls = z[:, :1]
            tokens = torch.cat([z[:, 1:-1], x_drop + fast], dim=1)
            mass = score.sum(dim=1, keepdim=True)
            restore = torch.argsort(index, dim=1)
            tokens, score, index = _gather(tokens, restore), _gather(score, restore), _gather(index, restore)
            if self.downsample:
                pooled = avg_pool_nd(score.reshape([shape[0], 1] + list(shape[2:])), [1] * (len(shape) - 4) + [2, 2])
                pooled = pooled.flatten(1)
                score = pooled * (mass / pooled.sum(dim=1, keepdim=True))
        x = tokens.transpose(1, 2).reshape(shape)
        return cls, x, PruneState(score, index)
