"""Scheduling: which convs are pruned at which rate, and how much is left after k rounds.

The loop over iterations and fine-tuning lives with the stages (`attrlib.stages`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

SPEC_FIRST_CONVS = 1  # the paper prunes the first conv ...
SPEC_LAST_CONVS = 6  # ... and the last six convs, nothing in between


def check_rate(rate: float, layer: str | None = None) -> None:
    """Raise a ValueError (naming `layer` when given) unless `rate` is in [0, 1)."""
    if not 0.0 <= rate < 1.0:  # also rejects NaN
        where = f" of layer {layer!r}" if layer is not None else ""
        raise ValueError(f"prune rate{where} must be in [0, 1), got {rate}")


def conv_names(model: nn.Module) -> list[str]:
    """Qualified names of the convs in forward order, e.g. `["features.0", "features.3", ...]`."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def spec_rates(model: nn.Module, p: float) -> dict[str, float]:
    """The paper's layer-wise rates: `p` on the first conv and the last six, 0 elsewhere.

    Paper: Park et al. (2020) one-shot structured pruning (authors' `layerwise_prune_rate`).
    Returns:
        `{conv name: rate}` for every conv (zeros included), so the schedule is explicit.
    """
    check_rate(p)
    names = conv_names(model)
    pruned = set(names[:SPEC_FIRST_CONVS]) | set(names[-SPEC_LAST_CONVS:])
    return {name: (float(p) if name in pruned else 0.0) for name in names}


def resolve_rates(
    model: nn.Module,
    rates: dict[str, float] | float,
    names: list[str] | None = None,
    schedule: Callable[[float], dict[str, float]] | None = None,
    unknown_hint: str = "unknown conv layer(s)",
) -> dict[str, float]:
    """Per-conv rates over the prunable convs `names` (default: every conv) from a float
    (`schedule(p)`, default `spec_rates`) or a partial dict (missing convs: 0).

    Raises:
        ValueError: a rate outside [0, 1) (names the layer) or a name not in `names`
            (`unknown_hint`, then the names).
    """
    names = conv_names(model) if names is None else names
    if isinstance(rates, (int, float)) and not isinstance(rates, bool):
        check_rate(rates)
        return (schedule or (lambda p: spec_rates(model, p)))(float(rates))
    unknown = sorted(set(rates) - set(names))
    if unknown:
        raise ValueError(f"{unknown_hint} {unknown}; valid names: {', '.join(names)}")
    for name, rate in rates.items():
        check_rate(rate, layer=name)
    return {name: float(rates.get(name, 0.0)) for name in names}


def remaining_fraction(k: int, fraction: float = 0.2) -> float:
    """Fraction of conv weights left after `k` rounds removing `fraction` of the rest: 0.8^k.

    Exact counts differ by rounding: each round removes `round(fraction * remaining)` weights
    (see `attrlib.prune.unstructured.global_prune_`), so after `k` rounds the count is within
    `k / 2` of `total * remaining_fraction(k)`.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return (1.0 - fraction) ** k
