"""2:4 masked layers → sparse tensor-core kernels (torch semi-structured sparsity).

`torch.sparse.to_sparse_semi_structured` compresses a 2:4 weight for the cuSPARSELt or
CUTLASS kernels on Ampere and newer GPUs, in fp16 or bf16. PyTorch's CUTLASS kernels are built
for sm_80/sm_86 and refuse Hopper (sm_90), so cuSPARSELt is used wherever torch has it. A 1×1
convolution (stride 1, no padding, not grouped) is a matmul over the channels, so it takes the
same kernel. The swap is for inference on the device (the compressed weight does not train).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RmtDeployError
from .masked import MaskedConv2d, MaskedLinear
from .sparsity import is_nm_sparse

# Minimum and multiple of the sparse weight's (rows, cols) in fp16/bf16, from
# torch/sparse/semi_structured.py (_DTYPE_SHAPE_CONSTRAINTS of each subclass).
SHAPE_MULTIPLES = {"cusparselt": (16, 16), "cutlass": (32, 64)}


def semi_structured_backend() -> str:
    """The kernel library torch's 2:4 tensors will use here: cuSPARSELt where torch has it."""
    return "cusparselt" if torch.backends.cusparselt.is_available() else "cutlass"


def _matrix_shape(module: nn.Module) -> tuple[int, int] | str:
    """(out, in) of the matmul the layer is, or why it is not one the kernels can run."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.Conv2d):
        plain = (
            module.kernel_size == (1, 1)
            and module.stride == (1, 1)
            and module.padding in ((0, 0), "valid")
            and module.dilation == (1, 1)
            and module.groups == 1
            and getattr(module, "pad", None) is None
        )
        if not plain:
            return "only 1×1 convolutions with stride 1, no padding and no groups are matmuls"
        return module.out_channels, module.in_channels
    return "only Linear layers and 1×1 convolutions"


def semi_structured_incompatibility(module: nn.Module, backend: str | None = None) -> str | None:
    """Why this layer cannot use the fp16/bf16 2:4 kernels of `backend` (None when it can)."""
    shape = _matrix_shape(module)
    if isinstance(shape, str):
        return shape
    backend = backend or semi_structured_backend()
    rows, cols = SHAPE_MULTIPLES[backend]
    if shape[0] % rows or shape[1] % cols:
        return (
            f"{shape[0]}×{shape[1]}: {backend} needs out % {rows} == 0 and in % {cols} == 0"
        )
    return None


def _sparse(weight: torch.Tensor, backend: str) -> torch.Tensor:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    return to_sparse_semi_structured(weight)


class SemiStructuredLinear(nn.Module):
    """y = x Wᵀ + b with W held as a 2:4 semi-structured sparse tensor."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, backend: str | None = None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.backend = backend or semi_structured_backend()
        self.sparse_weight = _sparse(weight, self.backend)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # the kernels take 2-D inputs only
        out = F.linear(x.reshape(-1, shape[-1]), self.sparse_weight, self.bias)
        return out.reshape(*shape[:-1], self.out_features)


class SemiStructuredConv1x1(SemiStructuredLinear):
    """A 1×1 convolution as the 2:4 matmul over channels (cheapest on channels-last input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = super().forward(x.permute(0, 2, 3, 1))
        return out.reshape(n, h, w, self.out_features).permute(0, 3, 1, 2)


def semi_structured_(
    model: nn.Module, dtype: torch.dtype = torch.float16, backend: str | None = None
) -> int:
    """Move `model` to CUDA in `dtype` and swap every 2:4 masked Linear and 1×1 convolution for
    the sparse kernel. Returns how many layers were swapped."""
    if not torch.cuda.is_available():
        raise RmtDeployError("2:4 sparse kernels need an NVIDIA GPU (Ampere or newer)")
    if dtype not in (torch.float16, torch.bfloat16):
        raise RmtDeployError(f"2:4 sparse kernels run in fp16 or bf16, not {dtype}")
    backend = backend or semi_structured_backend()
    model.to("cuda", dtype).eval()
    swapped = 0
    for name, module in list(model.named_modules()):
        if not (
            isinstance(module, MaskedLinear | MaskedConv2d)
            and semi_structured_incompatibility(module, backend) is None
            and is_nm_sparse(module.masked_weight())
        ):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        weight = module.masked_weight().detach().reshape(module.weight.shape[0], -1)
        bias = None if module.bias is None else module.bias.detach()
        kind = SemiStructuredLinear if isinstance(module, MaskedLinear) else SemiStructuredConv1x1
        setattr(parent, attr, kind(weight.contiguous(), bias, backend))
        swapped += 1
    return swapped
