import pandas as pd

from attrlib.validity import Bars, validity_table, validity_text


def _frame():
    rows = [
        {"run": f"teacher-s{t}/teacher", "stage": "teacher", "teacher_seed": t}
        | {"map_class": 0.94, "gradcam auc": 0.95, "gradcam pointing": 0.75, "pairs": 500}
        for t in (0, 1)
    ]
    rows.append(  # a good student of teacher 0
        {"run": "teacher-s0/distill/x4-swa-s0", "stage": "distill", "teacher_seed": 0}
        | {"map_class": 0.80, "pairs": 450, "dead_maps": 0.01}
    )
    rows.append(  # teacher 1's student near chance, its SWA maps mostly dead
        {"run": "teacher-s1/distill/x4-swa-s0", "stage": "distill", "teacher_seed": 1}
        | {"map_class": 0.50, "pairs": 200, "dead_maps": 0.4}
    )
    rows.append(  # a heavily pruned network: accuracy may fall, only its maps are held
        {"run": "teacher-s0/prune_iterative/naive-s0/iter_16", "stage": "prune_iterative"}
        | {"teacher_seed": 0, "map_class": 0.40, "pairs": 60}
    )
    for bits, mAP in ((8, 0.85), (2, 0.50)):  # 8 bits should keep mAP; 2 bits may lose it
        rows.append(
            {"run": f"teacher-s0/quantize/w{bits}-naive-s0", "stage": "quantize", "bits": bits}
            | {"teacher_seed": 0, "map_class": mAP, "pairs": 300}
        )
    return pd.DataFrame(rows)


def test_each_model_is_held_to_its_own_teachers_bars():
    table = validity_table(_frame()).set_index("run")
    assert table.loc["teacher-s0/distill/x4-swa-s0", "failed"] == ""
    failed = table.loc["teacher-s1/distill/x4-swa-s0", "failed"]
    assert "mAP 0.53 of its teacher's < 0.75" in failed
    assert "pairs 0.40 of its teacher's < 0.6" in failed and "dead matching maps 0.400" in failed
    assert table.loc["teacher-s0/prune_iterative/naive-s0/iter_16", "failed"] == ""
    assert table.loc["teacher-s0/quantize/w8-naive-s0", "failed"] == (
        "mAP 0.90 of its teacher's < 0.95"
    )
    assert table.loc["teacher-s0/quantize/w2-naive-s0", "failed"] == ""
    assert table.loc["teacher-s0/distill/x4-swa-s0", "map_ratio"] == 0.80 / 0.94


def test_a_teacher_that_does_not_localise_fails_and_the_summary_says_so():
    frame = _frame()
    frame.loc[0, "gradcam pointing"] = 0.6
    table = validity_table(frame, Bars())
    text = validity_text(table)
    assert text.startswith("Validity: 3 of 7 models miss a bar")
    assert "teacher-s0/teacher: Grad-CAM pointing 0.600 < 0.7" in text
    ok = validity_table(_frame().drop(index=[3, 5]))
    assert validity_text(ok).startswith("Validity: all 5 models clear")
