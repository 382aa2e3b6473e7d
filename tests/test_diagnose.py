import pandas as pd
import pytest
import torch

from attrlib.diagnose import dead_channels, rank_correlations, run_facts
from attrlib.models import ModelConfig, build_model


def _model_with_a_dead_channel():
    model = build_model(ModelConfig(widths=(4,) * 13, num_classes=3, input_size=32)).eval()
    bn = model.features[-3]  # the last BatchNorm before the attribution layer's ReLU
    assert isinstance(bn, torch.nn.BatchNorm2d)
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.fill_(1.0)  # every channel fires on every image...
        bn.bias[1] = -1.0  # ...but channel 1, which never does
    return model


def test_dead_channels_counts_channels_zero_on_every_image():
    model = _model_with_a_dead_channel()
    images = torch.randn(7, 3, 32, 32)
    assert dead_channels(model, images) == pytest.approx(0.25)
    assert dead_channels(model, images, batch_size=2) == dead_channels(model, images)


def test_rank_correlations_tell_which_fact_goes_with_the_score():
    facts = pd.DataFrame(
        {
            "teacher_seed": [0, 0, 1, 1],
            "seed": [0, 1, 0, 1],
            "dead_channels": [0.4, 0.3, 0.2, 0.1],
            "best_epoch": [25, 25, 25, 25],  # the same for every run: nothing to correlate
            "gradcam auc": [0.85, 0.88, 0.91, 0.95],
        }
    )
    table = rank_correlations(facts).set_index("fact")
    assert table.loc["dead_channels", "rho"] == pytest.approx(-1.0)
    assert "best_epoch" not in table.index and set(table["n"]) == {4}


def test_run_facts_names_a_setting_without_runs(tmp_path):
    frame = pd.DataFrame({"stage": ["distill"], "width_div": [2.0], "method": ["KD"], "run": ["x"]})
    with pytest.raises(ValueError, match="no 'KD' runs of distill at width_div=4"):
        run_facts(frame, tmp_path, torch.zeros(1, 3, 32, 32), "distill", 4.0, "KD")
