"""Feed-forward network shared by every block: token (Linear) form and channels-first (1×1 conv) form."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .common import conv_nd

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """fc1 → GELU → dropout → fc2 → dropout.

    ``dims=None`` uses Linear layers on (B, N, C) tokens; ``dims=2|3`` uses 1×1(×1) convs on NC* maps (the
    official CMlp, whose weights are also named ``fc1``/``fc2``).
    """

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, dims: Optional[int] = None) -> None:
        super().__init__()
        if dims is None:
            self.fc1 = nn.Linear(in_features, hidden_features)
            self.fc2 = nn.Linear(hidden_features, in_features)
        else:
            conv = conv_nd(dims)
            self.fc1 = conv(in_features, hidden_features, 1)
            self.fc2 = conv(hidden_features, in_features, 1)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
