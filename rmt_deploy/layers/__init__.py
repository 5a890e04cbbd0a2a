"""Compressed layers (low-rank factorizations, masked weights, N:M sparsity helpers) and the
views that say what a Linear/Conv2d-like layer computes."""

from .attention import UnfusedMultiheadAttention, unfuse_attention_
from .lowrank import LowRankConv2d, LowRankLinear, lowrank_from_view, lowrank_like
from .masked import MASKED_TYPES, MaskedConv2d, MaskedLinear, masked_from_view, masked_like
from .semi_structured import SemiStructuredLinear, semi_structured_
from .sparsity import is_nm_sparse, magnitude_mask, nm_incompatibility, nm_mask
from .views import LayerView, layer_view, register_layer_adapter

__all__ = [
    "MASKED_TYPES",
    "LayerView",
    "LowRankConv2d",
    "LowRankLinear",
    "MaskedConv2d",
    "MaskedLinear",
    "SemiStructuredLinear",
    "UnfusedMultiheadAttention",
    "is_nm_sparse",
    "layer_view",
    "lowrank_from_view",
    "lowrank_like",
    "magnitude_mask",
    "masked_from_view",
    "masked_like",
    "nm_incompatibility",
    "nm_mask",
    "register_layer_adapter",
    "semi_structured_",
    "unfuse_attention_",
]
