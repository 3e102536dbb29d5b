"""Token labeling (Jiang et al., LV-ViT), as the official UniFormer TL models train: class logits from the pooled map
plus per-token logits from ``aux_head``, with MixToken mixing a box of stem tokens between images of a batch.

:class:`TokenLabelingMixin` holds what is specific to it; :class:`~uniformer.models.uniformer.UniFormer` mixes it in
(``return_dense=True`` builds ``aux_head``). ``forward`` returns logits unless ``set_token_labeling(True)``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch

__all__ = ["TokenLabelingOutput", "TokenLabelingMixin"]


class TokenLabelingOutput(NamedTuple):
    """Training output of a token-labeling model (after ``set_token_labeling(True)``): class logits (B, K), per-token
    logits (B, N, K) and the MixToken box (x1, y1, x2, y2) on the stride-4 grid (all 0 without MixToken)."""

    cls_logits: torch.Tensor
    aux_logits: torch.Tensor
    box: Tuple[int, int, int, int]


class TokenLabelingMixin:
    """``set_token_labeling``, ``mix_token_box`` and ``forward_token_labeling`` for UniFormer (which provides
    ``return_dense``, ``mix_token``, ``aux_head``, ``head``, ``norm`` and the stage methods)."""

    @torch.jit.ignore
    def set_token_labeling(self, enable: bool = True) -> None:
        """Training-mode ``forward`` returns a :class:`TokenLabelingOutput` (the official token-labeling training,
        MixToken included when ``mix_token``); off by default, so ``forward`` always returns logits (timm's contract,
        as timm's VOLO)."""
        if enable and not self.return_dense:
            raise ValueError(f"{type(self).__name__} has no token-labeling head: build a *_tl model (return_dense)")
        self.token_labeling = enable

    @staticmethod
    def mix_token_box(size: Sequence[int], lam: float, generator: Optional[torch.Generator] = None) -> Tuple[int, ...]:
        """MixToken box (x1, y1, x2, y2) on a grid of ``size`` = (dim2, dim3): cut ratio √(1−λ), uniform centre.

        As in the official code, x indexes dim 2 and y dims 3 of the map.
        """
        W, H = int(size[0]), int(size[1])
        cut = (1.0 - lam) ** 0.5
        cut_w, cut_h = int(W * cut), int(H * cut)
        cx = int(torch.randint(W, (1,), generator=generator))
        cy = int(torch.randint(H, (1,), generator=generator))
        clip = lambda v, hi: min(max(v, 0), hi)  # noqa: E731
        return clip(cx - cut_w // 2, W), clip(cy - cut_h // 2, H), clip(cx + cut_w // 2, W), clip(cy + cut_h // 2, H)

    @torch.jit.ignore
    def forward_token_labeling(self, x: torch.Tensor) -> TokenLabelingOutput:
        """Class and per-token logits of the official token-labeling training (MixToken in training mode when
        ``mix_token``)."""
        if not self.return_dense:
            raise ValueError(f"{type(self).__name__} has no token-labeling head: build a *_tl model (return_dense)")
        self.check_input(x)
        x = self._stem(x)
        box = (0, 0, 0, 0)
        if self.mix_token and self.training:
            lam = float(torch.distributions.Beta(1.0, 1.0).sample())
            box = self.mix_token_box(x.shape[2:4], lam)
            x1, y1, x2, y2 = box
            mixed = x.clone()
            mixed[:, :, x1:x2, y1:y2] = x.flip(0)[:, :, x1:x2, y1:y2]
            x = mixed
        x = self.norm(self._stages_from_stem(x, 4)[-1])
        B, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        cls_logits = self.head(self.head_drop(tokens.mean(dim=1)))
        aux = self.aux_head(tokens)
        if box != (0, 0, 0, 0):
            x1, y1, x2, y2 = (v // 8 for v in box)  # stride-4 grid → stride-32 grid
            aux = aux.reshape(B, h, w, -1)
            restored = aux.clone()
            restored[:, x1:x2, y1:y2] = aux.flip(0)[:, x1:x2, y1:y2]
            aux = restored.reshape(B, h * w, -1)
        return TokenLabelingOutput(cls_logits, aux, box)
