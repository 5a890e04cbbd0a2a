"""nn.MultiheadAttention with its four projections as plain, replaceable Linear layers.

nn.MultiheadAttention never calls its `out_proj`: it hands `in_proj_weight` and
`out_proj.weight` to a fused functional, so a factorized or masked `out_proj` would be
ignored and the q/k/v projections are not modules at all. `UnfusedMultiheadAttention` computes
the same function (same arguments, same outputs, same state up to the split of `in_proj`)
through `q_proj`, `k_proj`, `v_proj` and `out_proj`, which compression can then replace like
any Linear. `unfuse_attention_` swaps them in place; outputs agree to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..surgery import replace_module


def unfusable(mha: nn.MultiheadAttention) -> str | None:
    """Why this attention cannot be unfused (None when it can)."""
    if mha.bias_k is not None or mha.add_zero_attn:
        return "nn.MultiheadAttention with add_bias_kv/add_zero_attn is left fused"
    return None


class UnfusedMultiheadAttention(nn.Module):
    """The computation of nn.MultiheadAttention with q/k/v/out as separate Linear modules."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    @torch.no_grad()
    def from_mha(cls, mha: nn.MultiheadAttention) -> UnfusedMultiheadAttention:
        why = unfusable(mha)
        if why:
            raise ValueError(why)
        layer = cls(
            mha.embed_dim,
            mha.num_heads,
            mha.dropout,
            bias=mha.in_proj_bias is not None,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
        )
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
        for proj, weight, bias in zip(
            (layer.q_proj, layer.k_proj, layer.v_proj), weights, biases, strict=True
        ):
            proj.weight.copy_(weight)
            if bias is not None:
                proj.bias.copy_(bias)
        layer.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.out_proj.bias is not None:
            layer.out_proj.bias.copy_(mha.out_proj.bias)
        return layer.to(mha.out_proj.weight.device, mha.out_proj.weight.dtype).train(mha.training)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, _ = query.shape
        source = key.shape[1]
        q = self._heads(self.q_proj(query)) * self.head_dim**-0.5
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        scores = q @ k.transpose(-2, -1)  # n, heads, L, S
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.reshape(n, self.num_heads, length, source)
            scores = _apply_mask(scores, attn_mask)
        if key_padding_mask is not None:
            scores = _apply_mask(scores, key_padding_mask[:, None, None, :])
        weights = scores.softmax(dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout)
        out = (weights @ v).transpose(1, 2).reshape(n, length, self.embed_dim)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, weights.squeeze(0) if unbatched else weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, unfused"


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Boolean masks mark what may NOT be attended (as in nn.MultiheadAttention); float masks
    are added."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask.to(scores.dtype)


def unfuse_attention_(model: nn.Module) -> list[str]:
    """Replace every unfusable-free nn.MultiheadAttention in `model` by its unfused twin, in
    place. Returns the names replaced (outputs are unchanged)."""
    replaced = []
    for name, module in list(model.named_modules()):
        if name and isinstance(module, nn.MultiheadAttention) and unfusable(module) is None:
            replace_module(model, name, UnfusedMultiheadAttention.from_mha(module))
            replaced.append(name)
    return replaced
