"""Prediction over a dataset and its metrics: row order and eval mode, and every metric
against scikit-learn or its formula (the metrics' own edge cases are in test_metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from torch.utils.data import TensorDataset

from attrlib.models import vgg16_bn_voc
from attrlib.predict import predict, prediction_metrics


def test_predict_returns_every_row_in_order_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = vgg16_bn_voc(16, num_classes=3, input_size=32).train()
    images = torch.randn(20, 3, 32, 32)
    labels = (torch.rand(20, 3) > 0.5).float()
    logits, got_labels = predict(model, TensorDataset(images, labels), torch.device("cpu"), 8)
    assert model.training  # restored
    assert torch.equal(got_labels, labels)
    with torch.no_grad():
        expected = model.eval()(images)  # NCHW; predict convolves channels-last
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_prediction_metrics_equal_sklearn(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(60, 7, generator=gen) * 2  # (N, K)
    labels = (torch.rand(60, 7, generator=gen) < 0.3).float()  # (N, K)
    labels[torch.arange(60), torch.randint(7, (60,), generator=gen)] = 1  # >= 1 per row
    assert labels.any(0).all()  # every class has a positive: sklearn's macro AP is defined
    y, s = labels.numpy(), logits.numpy()
    got = prediction_metrics(logits, labels)
    assert list(got) == ["loss", "map_class", "map_sample", "f1"]
    assert got["map_class"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    expected = skm.average_precision_score(y, s, average="samples")
    assert got["map_sample"] == pytest.approx(expected, abs=1e-12)
    expected = skm.f1_score(y, s > 0.5, average="samples", zero_division=0)
    assert got["f1"] == pytest.approx(expected, abs=1e-12)
    x = s.astype(np.float64)
    soft_margin = y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)  # -log sigmoid(+-x)
    assert got["loss"] == pytest.approx(soft_margin.mean(), rel=1e-6)
    assert prediction_metrics(logits, labels.bool()) == got  # bool labels score the same
