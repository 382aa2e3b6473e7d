"""Cost of a (compressed) network: parameters, multiply-accumulates and sparsity.

MACs are counted by PyTorch's own `FlopCounterMode` on one forward pass, so any change of
architecture (students, structurally pruned widths) is measured, not re-derived by hand.
Unstructured pruning keeps every weight stored, so it shows in `sparsity` and
`nonzero_params`, not in `params` or `macs`.

Paper: Park et al. (2020) report parameters, FLOPs and sparsity of each compressed model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attrlib.masks import effective_parameters
from attrlib.models import eval_mode
from attrlib.quantize import weight_bytes

# ops whose FLOPs count: convolutions and the matrix products behind nn.Linear
MAC_OPS = frozenset(
    {
        torch.ops.aten.convolution,
        torch.ops.aten._convolution,
        torch.ops.aten.mm,
        torch.ops.aten.addmm,
    }
)


def count_params(model: nn.Module) -> int:
    """Number of parameters as stored (a pruned weight and its zeros count in full)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int | None = None) -> int:
    """Multiply-accumulates of the conv and linear layers for one (3, S, S) image.

    Args:
        model: the network; its mode is restored afterwards.
        input_size: S in pixels; `model.config.input_size` when None.
    Returns:
        FLOPs of aten convolution/mm/addmm ops counted by `FlopCounterMode`, divided by 2
        (one MAC = one multiply + one add). Biases, batch norm, ReLU and pooling are not
        counted, as is usual for "FLOPs" tables.
    Note:
        Unstructured pruning does not change this count (zeros are still multiplied).
    """
    if input_size is None:
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "input_size"):
            raise ValueError("model has no config.input_size; pass input_size explicitly")
        input_size = config.input_size
    param = next(model.parameters())
    images = torch.zeros(1, 3, input_size, input_size, dtype=param.dtype, device=param.device)
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(images)
    flops = counter.get_flop_counts().get("Global", {})
    return int(sum(n for op, n in flops.items() if op in MAC_OPS)) // 2


def count_nonzero_params(model: nn.Module) -> int:
    """Number of non-zero entries among all effective parameters (pruned weights masked)."""
    return sum(int(torch.count_nonzero(t)) for _, _, t in effective_parameters(model))


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the effective conv weights (biases excluded).

    Paper: the sparsity of unstructured pruning, which Park et al. (2020) apply to convs.
    """
    total = zeros = 0
    for module, name, tensor in effective_parameters(model):
        if isinstance(module, nn.Conv2d) and name == "weight":
            total += tensor.numel()
            zeros += tensor.numel() - int(torch.count_nonzero(tensor))
    if total == 0:
        raise ValueError("model has no Conv2d weights")
    return zeros / total


def model_cost(model: nn.Module) -> dict:
    """All cost figures at the model's own input size: params, nonzero_params, macs, sparsity,
    and weight_bytes, the parameters' bytes at their stored widths (attrlib.quantize)."""
    return {
        "params": count_params(model),
        "nonzero_params": count_nonzero_params(model),
        "macs": count_macs(model),
        "sparsity": sparsity(model),
        "weight_bytes": weight_bytes(model),
    }
