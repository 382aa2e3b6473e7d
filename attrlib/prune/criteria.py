"""Scoring: how important each filter (structured) or each weight (unstructured) is.

Two registries, one per kind of cut; configs store a criterion's name. A criterion sees the
weights the forward pass uses (`attrlib.masks.effective_weight`: masked entries are zeros),
never a module, so it needs to know nothing about masks. Higher scores are kept.

- `STRUCTURED_CRITERIA`: `(weight (C_out, C_in, kh, kw)) -> scores (C_out,)`, one per filter;
- `UNSTRUCTURED_CRITERIA`: `(weight (C_out, C_in, kh, kw)) -> scores` of the same shape,
  finite and >= 0, compared across all convs at once (a global threshold).

A new criterion, also from outside attrlib, is one decorated function, e.g.
`@STRUCTURED_CRITERIA.register("l2")` on `lambda weight: weight.pow(2).sum((1, 2, 3)).sqrt()`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attrlib.registry import Registry

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
STRUCTURED_CRITERIA: Registry[ScoreFn] = Registry("structured pruning criterion")
UNSTRUCTURED_CRITERIA: Registry[ScoreFn] = Registry("unstructured pruning criterion")


def lookup(registry: Registry[ScoreFn], name: str) -> ScoreFn:
    """The criterion `name` of `registry`; a ValueError naming it and the registered ones.

    ValueError, not the registry's KeyError: an unknown name is a bad argument value (as a
    bad rate is), and it usually comes from a config or a notebook parameter.
    """
    if name not in registry:
        raise ValueError(
            f"unknown {registry.kind} {name!r}; registered: {', '.join(registry.names())}"
        )
    return registry.get(name)


@STRUCTURED_CRITERIA.register("l1")
def l1_filter_norm(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of each filter: `(C_out, C_in, kh, kw)` weights -> `(C_out,)` scores.

    Paper: Park et al. (2020) rank each conv's filters by the L1 norm of their weights
    (Li et al., 2017).
    """
    return weight.abs().sum(dim=(1, 2, 3))  # (C_out,)


@UNSTRUCTURED_CRITERIA.register("magnitude")
def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """Absolute value of each weight: `(C_out, C_in, kh, kw)` -> the same shape.

    Paper: Park et al. (2020) iterative pruning removes the globally smallest magnitudes
    (Han et al., 2015).
    """
    return weight.abs()
