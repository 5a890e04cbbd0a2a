"""2:4 masked Linear layers → sparse tensor-core kernels (torch semi-structured sparsity).

`torch.sparse.to_sparse_semi_structured` compresses a 2:4 weight for cuSPARSELt/CUTLASS
kernels on Ampere and newer GPUs, in fp16 or bf16. The swap is for inference on the device
(the compressed weight is not a Parameter and does not train).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RmtDeployError
from .masked import MaskedLinear
from .sparsity import is_nm_sparse


def semi_structured_incompatibility(module: nn.Module) -> str | None:
    """Why this layer cannot use the fp16/bf16 2:4 kernels (None when it can): they need a
    Linear whose output size is a multiple of 32 and input size a multiple of 64."""
    if not isinstance(module, nn.Linear):
        return "only Linear layers"
    if module.out_features % 32 or module.in_features % 64:
        return (
            f"{module.out_features}×{module.in_features}: the sparse kernels need out % 32 == 0 "
            "and in % 64 == 0"
        )
    return None


class SemiStructuredLinear(nn.Module):
    """y = x Wᵀ + b with W held as a 2:4 semi-structured sparse tensor."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.sparse_weight = to_sparse_semi_structured(weight)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = F.linear(x.reshape(-1, shape[-1]), self.sparse_weight, self.bias)
        return out.reshape(*shape[:-1], self.out_features)


def semi_structured_(model: nn.Module, dtype: torch.dtype = torch.float16) -> int:
    """Move `model` to CUDA in `dtype` and swap every 2:4 MaskedLinear for the sparse kernel.
    Returns how many layers were swapped."""
    if not torch.cuda.is_available():
        raise RmtDeployError("2:4 sparse kernels need an NVIDIA GPU (Ampere or newer)")
    if dtype not in (torch.float16, torch.bfloat16):
        raise RmtDeployError(f"2:4 sparse kernels run in fp16 or bf16, not {dtype}")
    model.to("cuda", dtype).eval()
    swapped = 0
    for name, module in list(model.named_modules()):
        if (
            isinstance(module, MaskedLinear)
            and semi_structured_incompatibility(module) is None
            and is_nm_sparse(module.masked_weight())
        ):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            weight = module.masked_weight().detach().to("cuda", dtype).contiguous()
            bias = None if module.bias is None else module.bias.detach().to("cuda", dtype)
            setattr(parent, attr, SemiStructuredLinear(weight, bias))
            swapped += 1
    return swapped
