"""Compressed layers: low-rank factorizations, masked weights, N:M sparsity helpers."""

from .lowrank import LowRankConv2d, LowRankLinear
from .masked import MASKED_TYPES, MaskedConv2d, MaskedLinear, masked_from_dense
from .semi_structured import SemiStructuredLinear, semi_structured_
from .sparsity import is_nm_sparse, magnitude_mask, nm_incompatibility, nm_mask

__all__ = [
    "MASKED_TYPES",
    "LowRankConv2d",
    "LowRankLinear",
    "MaskedConv2d",
    "MaskedLinear",
    "SemiStructuredLinear",
    "is_nm_sparse",
    "magnitude_mask",
    "masked_from_dense",
    "nm_incompatibility",
    "nm_mask",
    "semi_structured_",
]
