"""Multi-Head Relation Aggregation: the local (convolutional) and global (self-attention) UniFormer blocks.

Both blocks take and return channels-first maps (B, C, *spatial) for any number of spatial dims, so the same
classes build the image (2-D) and video (3-D) models.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .common import CheckpointedBlock, batch_norm_nd, conv_nd
from .embed import dynamic_pos_embed
from .ffn import Mlp

__all__ = ["Attention", "LocalBlock", "GlobalBlock", "layer_scale_param", "apply_layer_scale"]


def layer_scale_param(enabled: bool, init_value: float, shape: Tuple[int, ...]) -> Optional[nn.Parameter]:
    """γ of shape ``shape`` initialised to ``init_value`` when enabled, else None (no key in the state dict)."""
    return nn.Parameter(torch.full(shape, float(init_value))) if enabled else None


def apply_layer_scale(x: torch.Tensor, gamma: Optional[torch.Tensor]) -> torch.Tensor:
    return x if gamma is None else x * gamma


class Attention(nn.Module):
    """Multi-head self-attention on (B, N, C) tokens.

    ``heads = num_heads``, per-head dim ``C // heads``; ``proj`` always has a bias. The fast path uses
    ``F.scaled_dot_product_attention``; setting ``fused_attn = False`` runs the explicit softmax(q kᵀ) v path
    (what FLOP counters see). In the explicit path, fp16/bf16 logits and softmax are computed in fp32.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(
                f"attention width {dim} must split evenly into heads; got {num_heads} heads "
                f"(heads = embed_dim // head_dim)"
            )
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return q, k, v

    def _probs(self, q: torch.Tensor, k: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Softmax attention probabilities (before dropout), computed in fp32 for half-precision inputs.
        ``attn_mask`` (bool, True = may attend) excludes keys."""
        logits = (q.float() * self.scale) @ k.float().transpose(-2, -1)
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        return logits.softmax(dim=-1)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if self.fused_attn and not torch.jit.is_tracing():  # traced (fvcore, ONNX): the explicit, countable path
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale
            )
        probs = self._probs(q, k) if attn_mask is None else self._probs(q, k, attn_mask)
        return self.attn_drop(probs.to(v.dtype)) @ v

    def _out(self, x: torch.Tensor, shape: List[int]) -> torch.Tensor:
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(shape)))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        return self._out(self._attend(q, k, v, attn_mask), x.shape)

    def forward_with_cls_attn(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Attention output plus the head-averaged probabilities of query token 0 over all keys, (B, N).

        Used by the hourglass blocks to score tokens; only that one row is materialised on the fused path.
        """
        q, k, v = self._qkv(x)
        if self.fused_attn and not torch.jit.is_tracing():
            cls_row = self._probs(q[:, :, :1], k)[:, :, 0]
            out = self._attend(q, k, v)
        else:
            probs = self._probs(q, k)
            cls_row = probs[:, :, 0]
            out = self.attn_drop(probs.to(v.dtype)) @ v
        return self._out(out, x.shape), cls_row.mean(dim=1).to(x.dtype)


class LocalBlock(CheckpointedBlock):
    """Local MHRA block (official ``CBlock``, stages 1–2): DPE, BN → 1×1 → depthwise 5×5(×5) → 1×1, CMlp.

    Layer scale γ has shape (1, C, 1, 1[, 1]) and multiplies each branch inside drop path.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: bool = False,
        init_value: float = 1e-6,
        dims: int = 2,
    ) -> None:
        super().__init__()
        conv, bn = conv_nd(dims), batch_norm_nd(dims)
        self.pos_embed = dynamic_pos_embed(dims, dim)
        self.norm1 = bn(dim)
        self.conv1 = conv(dim, dim, 1)
        self.attn = conv(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = conv(dim, dim, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = bn(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, dims=dims)
        gamma_shape = (1, dim) + (1,) * dims
        self.gamma_1 = layer_scale_param(layer_scale, init_value, gamma_shape)
        self.gamma_2 = layer_scale_param(layer_scale, init_value, gamma_shape)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(apply_layer_scale(self.conv2(self.attn(self.conv1(self.norm1(x)))), self.gamma_1))
        x = x + self.drop_path(apply_layer_scale(self.mlp(self.norm2(x)), self.gamma_2))
        return x


class GlobalBlock(CheckpointedBlock):
    """Global MHRA block (official ``SABlock``, stages 3–4): DPE, then pre-LN self-attention and MLP on tokens.

    Tokens are the map flattened in row-major order (video: t-major). Layer scale γ has shape (C,).
    ``split=True`` (video only, official ``SplitSABlock``) divides attention into a temporal attention per spatial
    location (``t_norm``/``t_attn``, initialised to output 0) followed by a spatial attention per frame whose skip
    connection is the pre-temporal input. ``window_size > 0`` (2-D only, dense models) attends inside non-overlapping
    windows; the map is zero-padded right/bottom after ``norm1`` and, as in the official weights' training, the padded
    positions are NOT masked (they act as keys with value ``b_v``) unless ``window_mask=True``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: bool = False,
        init_value: float = 1e-6,
        dims: int = 2,
        split: bool = False,
        window_size: int = 0,
        window_mask: bool = False,
    ) -> None:
        super().__init__()
        if split and (dims != 3 or layer_scale):
            raise ValueError("split (divided space-time) attention needs dims=3 and no layer scale")
        if window_size and (dims != 2 or split or window_size < 1):
            raise ValueError(f"window attention needs dims=2, no split and window_size >= 1, got {window_size}")
        self.split = split
        self.window_size, self.window_mask = int(window_size), window_mask
        self.pos_embed = dynamic_pos_embed(dims, dim)
        # None (no keys) unless split: TorchScript then drops the divided branch statically
        self.t_norm = nn.LayerNorm(dim, eps=1e-6) if split else None
        self.t_attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop) if split else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.gamma_1 = layer_scale_param(layer_scale, init_value, (dim,))
        self.gamma_2 = layer_scale_param(layer_scale, init_value, (dim,))

    def mix_tokens(self, t: torch.Tensor) -> torch.Tensor:
        """Attention and MLP residual branches on (B, N, C) tokens."""
        t = t + self.drop_path(apply_layer_scale(self.attn(self.norm1(t)), self.gamma_1))
        t = t + self.drop_path(apply_layer_scale(self.mlp(self.norm2(t)), self.gamma_2))
        return t

    def init_split(self) -> None:
        """Official init of the temporal branch: qkv 0, proj weight all ones, proj bias 0 (outputs 0 at init)."""
        nn.init.zeros_(self.t_attn.qkv.weight)
        if self.t_attn.qkv.bias is not None:
            nn.init.zeros_(self.t_attn.qkv.bias)
        nn.init.ones_(self.t_attn.proj.weight)
        nn.init.zeros_(self.t_attn.proj.bias)

    def _divided(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        t = x.reshape(B, C, T, H * W).permute(0, 3, 2, 1).reshape(B * H * W, T, C)  # temporal sequences
        t = t + self.drop_path(self.t_attn(self.t_norm(t)))
        t = t.reshape(B, H * W, T, C).transpose(1, 2).reshape(B * T, H * W, C)  # spatial sequences
        skip = x.reshape(B, C, T, H * W).permute(0, 2, 3, 1).reshape(B * T, H * W, C)
        t = (skip + self.drop_path(self.attn(self.norm1(t)))).reshape(B, T * H * W, C)
        return t + self.drop_path(self.mlp(self.norm2(t)))

    def _windowed(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        ws = self.window_size
        t = x.permute(0, 2, 3, 1)  # NHWC
        y = self.norm1(t)
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))  # zero vectors after the norm, as in the official code
        Hp, Wp = H + pad_b, W + pad_r
        windows = y.reshape(B, Hp // ws, ws, Wp // ws, ws, C).transpose(2, 3).reshape(-1, ws * ws, C)
        mask: Optional[torch.Tensor] = None
        if self.window_mask and (pad_b > 0 or pad_r > 0):
            valid = F.pad(y.new_ones(1, H, W), (0, pad_r, 0, pad_b)).reshape(1, Hp // ws, ws, Wp // ws, ws)
            valid = valid.transpose(2, 3).reshape(-1, 1, 1, ws * ws).to(torch.bool).repeat(B, 1, 1, 1)
            mask = valid
        y = self.attn(windows, mask).reshape(B, Hp // ws, Wp // ws, ws, ws, C).transpose(2, 3)
        y = y.reshape(B, Hp, Wp, C)[:, :H, :W]
        t = t + self.drop_path(apply_layer_scale(y, self.gamma_1))
        t = t + self.drop_path(apply_layer_scale(self.mlp(self.norm2(t)), self.gamma_2))
        return t.permute(0, 3, 1, 2)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        if self.window_size > 0:
            return self._windowed(x)
        if self.t_attn is not None:
            t = self._divided(x)
        else:
            t = self.mix_tokens(x.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(x.shape)
