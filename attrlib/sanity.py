"""Sanity check of the faithfulness metrics: cascading model randomisation.

`python -m attrlib.sanity --checkpoint ... --data-root ... --out ...` runs it on one trained
model and writes one row per (randomisation step, attribution method).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from attrlib.faithfulness import Faithfulness, faithfulness_table, summarize


def randomisation_check(
    model: nn.Module,
    dataset,
    methods: Sequence[str],
    settings: Faithfulness | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> pd.DataFrame:
    """Cascading randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", 2018) as
    a check of the metrics: the weights of the convolutions and linear layers are re-drawn
    from their initialisation, the last layer first, more layers at each step; the maps come
    from the randomised copy and are scored by the trained `model`. Metrics that notice
    maps which no longer explain the network fall (insertion) or rise (deletion, ROAD) as
    more layers are randomised. One row per (step, method) with the mean of each metric.
    """
    import copy

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)][::-1]
    counts = sorted({0, 1, 2, len(layers) // 4, len(layers) // 2, len(layers)})
    torch.manual_seed(seed)
    rows = []
    for count in counts:
        randomised = copy.deepcopy(model)
        chosen = [m for m in randomised.modules() if isinstance(m, nn.Conv2d | nn.Linear)][::-1]
        for layer in chosen[:count]:
            layer.reset_parameters()
        table, _ = faithfulness_table(
            model, dataset, methods, settings, device, maps_model=randomised.to(device)
        )
        for method, means in summarize(table).items():
            rows.append({"layers_randomised": count, "of": len(layers), "method": method, **means})
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    import argparse

    from attrlib.data import VOCLocalization
    from attrlib.io import write_text_atomic
    from attrlib.stages import load_reference

    parser = argparse.ArgumentParser(
        prog="python -m attrlib.sanity",
        description="Sanity check of the faithfulness metrics: cascading randomisation of one "
        "trained model (maps of the randomised copy, scored by the trained network).",
    )
    parser.add_argument("--checkpoint", required=True, help="a trained model's best.pt")
    parser.add_argument("--data-root", required=True, help="the VOC2012-layout folder")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--pairs", type=int, default=Faithfulness.pairs)
    parser.add_argument("--steps", type=int, default=Faithfulness.steps)
    parser.add_argument("--metrics", default="", help="comma-separated (default: not opt-in)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    settings = Faithfulness(
        pairs=args.pairs, steps=args.steps, metrics=tuple(filter(None, args.metrics.split(",")))
    )
    from attrlib.attribution import METHODS

    model, classes = load_reference(args.checkpoint, args.data_root, args.device)
    loc = VOCLocalization(args.data_root, "val", classes, size=model.config.input_size)
    frame = randomisation_check(model, loc, METHODS.names(), settings, args.device)
    write_text_atomic(args.out, frame.to_csv(index=False))
    print(frame.round(3).to_string(index=False))
    return frame


if __name__ == "__main__":
    main()
