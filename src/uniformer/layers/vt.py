"""Visual Transformer (Wu et al., ICCV 2021) building blocks: tokenizers, token transformer, projector, VT module.

There is no official code; ``shared/spec/vt.md`` fixes one interpretation (the ICCV equations define the semantics,
the arXiv pseudo-code fills the gaps). Layouts: pixel maps NCHW, tokens (B, L, C_T). Token-side maps are kernel-1
``Conv1d``; pixel-side maps are 1×1 ``Conv2d``. Every attention is a softmax whose normalisation axis is documented
(tokenizers: over pixels; transformer: over key tokens; projector: over tokens).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TokenPositionEncoding", "FilterTokenizer", "RecurrentTokenizer", "TokenTransformer", "Projector",
           "VTModule", "init_vt_weights", "POS_DIM"]

POS_DIM = 49  # C_p: a 7x7 summary of where a token attends


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, C, S) → (B, heads, S, C // heads)."""
    B, C, S = x.shape
    return x.reshape(B, heads, C // heads, S).transpose(-1, -2)


class TokenPositionEncoding(nn.Module):
    """Position code of each token from its attention map: nearest-resize to 14×14 → 3×3 stride-2 conv → 7×7 →
    Linear(49→49). Works at any input resolution; describes where a token attends, not its slot index."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, 1, 3, stride=2, padding=1)
        self.pos_conv = nn.Linear(POS_DIM, POS_DIM)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        """(B, L, H, W) attention maps → (B, L, 49)."""
        B, L, H, W = attn.shape
        a = F.interpolate(attn.reshape(B * L, 1, H, W), size=(14, 14), mode="nearest")
        return self.pos_conv(self.down(a).flatten(1)).reshape(B, L, -1)


class _TokenizerBase(nn.Module):
    """Value projection, optional position code and ``conv_token`` to C_T, shared by both tokenizers."""

    def __init__(self, in_channels: int, token_dim: int, pix_groups: int, pos_enc: bool) -> None:
        super().__init__()
        self.value = nn.Conv2d(in_channels, in_channels, 1, groups=pix_groups)
        self.pos_enc = TokenPositionEncoding() if pos_enc else None
        self.conv_token = nn.Conv1d(in_channels + (POS_DIM if pos_enc else 0), token_dim, 1)

    def _tokens(self, raw: torch.Tensor, attn_map: torch.Tensor) -> torch.Tensor:
        """raw (B, L, C) weighted pixel averages, attn_map (B, L, H, W) → tokens (B, L, C_T)."""
        if self.pos_enc is not None:
            raw = torch.cat([raw, self.pos_enc(attn_map)], dim=-1)
        return self.conv_token(raw.transpose(1, 2)).transpose(1, 2)


class FilterTokenizer(_TokenizerBase):
    """First tokenizer (ICCV eq. 1): ``L`` spatial attentions ``softmax_pixels(W_A X / √C)`` pool the value-projected
    pixels into L tokens. ``forward(x, tokens=None)`` → (tokens (B, L, C_T), attention (B, 1, L, H·W)); ``tokens``
    is ignored (the recurrent tokenizer's signature, so both plug into :class:`VTModule` the same way)."""

    def __init__(self, in_channels: int, num_tokens: int = 16, token_dim: int = 1024, pix_groups: int = 16,
                 pos_enc: bool = True) -> None:
        super().__init__(in_channels, token_dim, pix_groups, pos_enc)
        self.attn_conv = nn.Conv2d(in_channels, num_tokens, 1, bias=False)
        self.scale = in_channels ** -0.5

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        B, C, H, W = x.shape
        attn = (self.attn_conv(x).flatten(2) * self.scale).softmax(dim=-1)  # (B, L, N), sums to 1 over pixels
        raw = attn @ self.value(x).flatten(2).transpose(1, 2)  # (B, L, C)
        return self._tokens(raw, attn.reshape(B, -1, H, W)), attn.unsqueeze(1)


class RecurrentTokenizer(_TokenizerBase):
    """Later tokenizers (ICCV eq. 2): the previous tokens, projected to pixel channels, query the map with ``h``
    heads. ``update='full'`` re-extracts all L tokens (ICCV); ``'half'`` re-extracts L/2 from the first half of the
    incoming tokens and keeps their second half in front (arXiv pseudo-code).
    ``forward(x, tokens)`` → (tokens (B, L, C_T), attention (B, h, L_a, H·W))."""

    def __init__(self, in_channels: int, token_dim: int = 1024, num_heads: int = 16, pix_groups: int = 16,
                 token_groups: int = 1, pos_enc: bool = True, update: str = "full") -> None:
        super().__init__(in_channels, token_dim, pix_groups, pos_enc)
        if update not in ("full", "half"):
            raise ValueError(f"recurrent_update must be 'full' or 'half', got {update!r}")
        if in_channels % num_heads:
            raise ValueError(f"tokenizer channels {in_channels} must split into {num_heads} heads")
        self.update, self.num_heads = update, num_heads
        self.query = nn.Conv1d(token_dim, in_channels, 1, groups=token_groups, bias=False)
        self.key = nn.Conv2d(in_channels, in_channels, 1, groups=pix_groups, bias=False)

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if tokens is None:
            raise ValueError("a recurrent tokenizer needs the previous module's tokens")
        B, C, H, W = x.shape
        L = tokens.shape[1]
        t_in = tokens[:, : L // 2] if self.update == "half" else tokens
        h = self.num_heads
        q = _heads(self.query(t_in.transpose(1, 2)), h)  # (B, h, L_a, d)
        k = _heads(self.key(x).flatten(2), h)  # (B, h, N, d)
        v = _heads(self.value(x).flatten(2), h)  # (B, h, N, d)
        attn = (q @ k.transpose(-1, -2) * (C // h) ** -0.5).softmax(dim=-1)  # (B, h, L_a, N), sums to 1 over pixels
        raw = (attn @ v).transpose(1, 2).reshape(B, t_in.shape[1], C)
        new = self._tokens(raw, attn.mean(dim=1).reshape(B, -1, H, W))
        out = new if self.update == "full" else torch.cat([tokens[:, L // 2:], new], dim=1)
        return out, attn


class TokenTransformer(nn.Module):
    """Transformer over tokens (ICCV eqs. 3–4): grouped K/Q to C_T/2 and V, ``h`` heads, softmax over key tokens,
    residual; then a ReLU FFN with residual. No LayerNorm, no dropout, no position embedding.
    ``forward(tokens)`` → (tokens, attention (B, h, L, L))."""

    def __init__(self, token_dim: int = 1024, num_heads: int = 16, kqv_groups: int = 8, ffn_dim: int = 1024) -> None:
        super().__init__()
        if (token_dim // 2) % num_heads or token_dim % num_heads:
            raise ValueError(f"token_dim {token_dim} must split into {num_heads} heads (also at half width)")
        self.num_heads = num_heads
        self.k = nn.Conv1d(token_dim, token_dim // 2, 1, groups=kqv_groups, bias=False)
        self.q = nn.Conv1d(token_dim, token_dim // 2, 1, groups=kqv_groups, bias=False)
        self.v = nn.Conv1d(token_dim, token_dim, 1, groups=kqv_groups)
        self.ffn = nn.ModuleDict(dict(fc1=nn.Conv1d(token_dim, ffn_dim, 1), fc2=nn.Conv1d(ffn_dim, token_dim, 1)))

    def forward(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        B, L, C = tokens.shape
        x, h = tokens.transpose(1, 2), self.num_heads
        q, k, v = _heads(self.q(x), h), _heads(self.k(x), h), _heads(self.v(x), h)
        attn = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)  # rows sum to 1 over key tokens
        tokens = tokens + (attn @ v).transpose(1, 2).reshape(B, L, C)
        x = tokens.transpose(1, 2)
        return tokens + self.ffn["fc2"](F.relu(self.ffn["fc1"](x))).transpose(1, 2), attn


class Projector(nn.Module):
    """Tokens back to pixels (ICCV eq. 5): each pixel attends over the L tokens (``h`` heads, softmax over tokens) and
    adds the result to a lateral path (1×1 conv + BN when channels change, identity otherwise).
    ``forward(x, tokens)`` → (map (B, C_out, H, W), coefficients (B, h, H·W, L))."""

    def __init__(self, in_channels: int, out_channels: int, token_dim: int = 1024, num_heads: int = 16,
                 pix_groups: int = 16, token_groups: int = 1) -> None:
        super().__init__()
        if out_channels % num_heads:
            raise ValueError(f"projector channels {out_channels} must split into {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Conv2d(in_channels, out_channels, 1, groups=pix_groups, bias=False)
        self.k = nn.Conv1d(token_dim, out_channels, 1, groups=token_groups, bias=False)
        self.v = nn.Conv1d(token_dim, out_channels, 1, groups=token_groups)
        self.lateral = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
                        if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        B, _, H, W = x.shape
        h, t = self.num_heads, tokens.transpose(1, 2)
        q = _heads(self.q(x).flatten(2), h)  # (B, h, N, d)
        k, v = _heads(self.k(t), h), _heads(self.v(t), h)  # (B, h, L, d)
        coef = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, h, N, L), sums to 1 over tokens
        y = (coef @ v).transpose(-1, -2).reshape(B, -1, H, W)
        return self.lateral(x) + y, coef


class VTModule(nn.Module):
    """Tokenizer (filter for the first module, recurrent otherwise) → transformer → projector (optional).

    ``forward(x, tokens=None)`` → (tokens (B, L, C_T), map (B, C_out, H, W) or None without projector, attention
    maps dict with ``tokenizer``, ``transformer`` and ``projector`` entries).
    """

    def __init__(self, in_channels: int, out_channels: int, first: bool, num_tokens: int = 16, token_dim: int = 1024,
                 num_heads: int = 16, pix_groups: int = 16, kqv_groups: int = 8, token_groups: int = 1,
                 ffn_dim: int = 1024, pos_enc: bool = True, recurrent_update: str = "full",
                 projector: bool = True) -> None:
        super().__init__()
        self.first = first
        self.tokenizer = (FilterTokenizer(in_channels, num_tokens, token_dim, pix_groups, pos_enc) if first else
                          RecurrentTokenizer(in_channels, token_dim, num_heads, pix_groups, token_groups, pos_enc,
                                             recurrent_update))
        self.transformer = TokenTransformer(token_dim, num_heads, kqv_groups, ffn_dim)
        self.projector = (Projector(in_channels, out_channels, token_dim, num_heads, pix_groups, token_groups)
                          if projector else None)

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, Optional[torch.Tensor]]]:
        t, a_tok = self.tokenizer(x, tokens)
        t, a_tr = self.transformer(t)
        y: Optional[torch.Tensor] = None
        coef: Optional[torch.Tensor] = None
        if self.projector is not None:
            y, coef = self.projector(x, t)
        attn: Dict[str, Optional[torch.Tensor]] = {"tokenizer": a_tok, "transformer": a_tr, "projector": coef}
        return t, y, attn


def init_vt_weights(module: nn.Module) -> None:
    """Convs kaiming-normal (fan_out), biases 0, norms weight 1 / bias 0 (classifier Linear keeps PyTorch's init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
