"""The bars a study clears before its effects mean anything.

A comparison of maps is empty when the networks behind them do not work: a teacher that
does not localise has nothing to preserve, a student near chance scores few (image, class)
pairs, and an SWA run whose matching maps are all zero was not matched at all. Each model is
held to the bars below against its own teacher (the one of its replicate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Bars:
    teacher_map: float = 0.90  # class mAP
    teacher_auc: float = 0.90  # Grad-CAM AUC
    teacher_pointing: float = 0.70  # Grad-CAM pointing game
    student_map_ratio: float = 0.75  # of its teacher's class mAP
    student_pairs_ratio: float = 0.60  # of its teacher's scored (image, class) pairs
    dead_maps: float = 0.10  # last-epoch share of all-zero matching maps (SWA, EWA, ...)
    int8_map_ratio: float = 0.95  # of its teacher's class mAP, an 8-bit quantized network


def validity_table(frame: pd.DataFrame, bars: Bars = Bars()) -> pd.DataFrame:
    """One row per model of all_runs.csv (`frame`, with `teacher_seed`): the quantities the
    bars look at and `failed`, the bars it misses ("" when it clears them all). Students are
    the distilled networks; pruned networks keep only the dead-maps bar (pruning to 97 %
    sparsity is meant to cost accuracy); 8-bit quantized networks keep nearly all of their
    teacher's mAP (lower widths are in the grid to lose some)."""
    teachers = frame[frame["stage"] == "teacher"].set_index("teacher_seed")
    rows = []
    for _, m in frame.iterrows():
        failed = []
        if m["stage"] == "teacher":
            if m["map_class"] < bars.teacher_map:
                failed.append(f"mAP {m['map_class']:.3f} < {bars.teacher_map}")
            if m.get("gradcam auc", np.nan) < bars.teacher_auc:
                failed.append(f"Grad-CAM AUC {m['gradcam auc']:.3f} < {bars.teacher_auc}")
            if m.get("gradcam pointing", np.nan) < bars.teacher_pointing:
                failed.append(
                    f"Grad-CAM pointing {m['gradcam pointing']:.3f} < {bars.teacher_pointing}"
                )
            map_ratio = pairs_ratio = np.nan
        else:
            teacher = teachers.loc[m["teacher_seed"]]
            map_ratio = m["map_class"] / teacher["map_class"]
            pairs_ratio = m["pairs"] / teacher["pairs"]
            if m["stage"] == "distill" and map_ratio < bars.student_map_ratio:
                failed.append(f"mAP {map_ratio:.2f} of its teacher's < {bars.student_map_ratio}")
            if m["stage"] == "distill" and pairs_ratio < bars.student_pairs_ratio:
                failed.append(
                    f"pairs {pairs_ratio:.2f} of its teacher's < {bars.student_pairs_ratio}"
                )
            if m["stage"] == "quantize" and m.get("bits") == 8 and map_ratio < bars.int8_map_ratio:
                failed.append(f"mAP {map_ratio:.2f} of its teacher's < {bars.int8_map_ratio}")
        if m.get("dead_maps", np.nan) > bars.dead_maps:
            failed.append(f"dead matching maps {m['dead_maps']:.3f} > {bars.dead_maps}")
        rows.append(
            {
                "run": m["run"],
                "stage": m["stage"],
                "teacher_seed": m["teacher_seed"],
                "map_ratio": map_ratio,
                "pairs_ratio": pairs_ratio,
                "failed": "; ".join(failed),
            }
        )
    return pd.DataFrame(rows)


def validity_text(table: pd.DataFrame) -> str:
    """One line for summary.md: every model clears the bars, or which do not and why."""
    failing = table[table["failed"] != ""]
    if failing.empty:
        return f"Validity: all {len(table)} models clear the study's bars (attrlib/validity.py).\n"
    lines = [f"Validity: {len(failing)} of {len(table)} models miss a bar (attrlib/validity.py):"]
    lines += [f"- {r.run}: {r.failed}" for r in failing.itertuples()]
    return "\n".join(lines) + "\n"
