"""Faithfulness metrics (attrlib.faithfulness) against Quantus and the definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import quantus
import torch
from torch import nn

import attrlib.faithfulness as fa
from attrlib.config import EvalConfig
from attrlib.effects import effects_table, verdict
from attrlib.sanity import randomisation_check

from nets import random_vgg


def small_net(channels: int = 3, classes: int = 3, side: int = 8) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * side * side, classes),
    )
    return net.eval()


@pytest.mark.parametrize("side, fraction", [(8, 0.3), (16, 0.6), (24, 0.9)])
def test_imputation_equals_quantus(side, fraction):
    from quantus.functions.perturb_func import noisy_linear_imputation

    g = torch.Generator().manual_seed(side)
    image = torch.randn(1, 3, side, side, generator=g, dtype=torch.float64)
    unknown = torch.rand(1, 1, side, side, generator=g) < fraction
    indices = np.flatnonzero(unknown.flatten().numpy())
    expected = noisy_linear_imputation(image[0].numpy(), indices, noise=0.0)
    ours = fa.linear_imputation(image, unknown, noise=0.0, tolerance=1e-12)[0].numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-8)


def test_imputation_keeps_known_pixels_and_adds_seeded_noise():
    image = torch.randn(2, 3, 16, 16)
    unknown = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    unknown[:, :, 4:10, 3:12] = True
    a = fa.linear_imputation(image, unknown, generator=torch.Generator().manual_seed(1))
    b = fa.linear_imputation(image, unknown, generator=torch.Generator().manual_seed(1))
    clean = fa.linear_imputation(image, unknown, noise=0.0)
    assert torch.equal(a, b)
    assert torch.equal(a[~unknown.expand_as(a)], image[~unknown.expand_as(image)])
    noise = (a - clean)[unknown.expand_as(a)]
    assert 0.005 < noise.std() < 0.02  # ROAD_NOISE = 0.01
    with pytest.raises(ValueError, match="one known pixel"):
        fa.linear_imputation(image, torch.ones_like(unknown))


def test_deletion_equals_quantus_region_perturbation():
    """One pixel per region, most relevant first, baseline 0: Quantus's curve is the drop
    p(0) - p(k) of ours at every step."""
    net = small_net()
    x = torch.randn(2, 3, 8, 8)
    y = np.array([0, 2])
    a = torch.rand(2, 1, 8, 8)  # continuous: no ties, one order
    metric = quantus.RegionPerturbation(
        patch_size=1,
        regions_evaluation=64,
        order="morf",
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    expected = metric(
        model=nn.Sequential(net, nn.Sigmoid()).eval(),
        x_batch=x.numpy(),
        y_batch=y,
        a_batch=a.numpy(),
        device="cpu",
        softmax=False,
        channel_first=True,
    )
    _, probs = fa.curves(net, x, torch.from_numpy(y), a[:, 0], "deletion", 64, "zero")
    np.testing.assert_allclose((probs[:, :1] - probs[:, 1:]).numpy(), expected, atol=1e-6)


def test_road_equals_quantus(monkeypatch):
    """Quantus's ROAD scores whether the arg-max class survives; ours reads the class
    probability of the same imputed images: the arg-max of those images must agree."""
    monkeypatch.setattr(fa, "ROAD_NOISE", 0.0)
    net = small_net(channels=1, classes=5)
    x = torch.randn(6, 1, 8, 8)
    maps = torch.rand(6, 1, 8, 8)
    y = net(x).argmax(1)
    steps = 8
    metric = quantus.ROAD(
        percentages=[100 * k / steps for k in range(1, steps)],
        noise=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    expected = metric(
        model=net,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=maps.numpy(),
        device="cpu",
        softmax=False,
        channel_first=True,
    )
    fracs = fa.fractions(steps, full=False)[1:]
    top = fa.top_masks(fa.pixel_ranks(maps[:, 0]), fracs)  # (P, K, S, S)
    k = len(fracs)
    images = x[:, None].expand(-1, k, -1, -1, -1).flatten(0, 1)
    perturbed = fa.FAITHFULNESS.get("road").fn(images, top.flatten(0, 1)[:, None], images)
    with torch.no_grad():
        kept = (net(perturbed).argmax(1) == y.repeat_interleave(k)).view(6, k).float().mean(0)
    np.testing.assert_allclose(kept.numpy(), list(expected.values()), atol=1e-12)


def naive_curve(model, image, cls, score_map, metric, steps, baseline):
    """Per pair, from the definitions: order, perturb fraction by fraction, read p."""
    n = score_map.numel()
    order = sorted(range(n), key=lambda i: (-float(score_map.flatten()[i]), i))
    base = fa.baseline_images(image[None], baseline)[0]
    full = metric != "road"
    probs = []
    for f in fa.fractions(steps, full).tolist():
        top = torch.zeros(n, dtype=torch.bool)
        top[order[: int(np.floor(n * f + 1e-9))]] = True
        top = top.view(1, *score_map.shape)
        if metric == "deletion":
            x = torch.where(top, base, image)
        elif metric == "insertion":
            x = torch.where(top, image, base)
        else:
            x = fa.linear_imputation(image[None], top[None], noise=0.0)[0]
        with torch.no_grad():
            probs.append(torch.sigmoid(model(x[None])[0, cls]).item())
    fracs = fa.fractions(steps, full).numpy()
    return np.trapezoid(probs, fracs) / (fracs[-1] - fracs[0])


@pytest.mark.parametrize("metric", ["deletion", "insertion", "road"])
@pytest.mark.parametrize("baseline", ["blur", "mean"])
def test_batched_scores_equal_a_per_pair_loop(metric, baseline, monkeypatch):
    monkeypatch.setattr(fa, "ROAD_NOISE", 0.0)
    model = random_vgg(num_classes=5, input_size=32, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    classes = torch.tensor([0, 3, 1, 4])
    maps = torch.rand(4, 32, 32, generator=g)
    fracs, probs = fa.curves(model, images, classes, maps, metric, 6, baseline, chunk=7)
    batched = fa.curve_score(fracs, probs).numpy()
    loop = [
        naive_curve(model, images[i], int(classes[i]), maps[i], metric, 6, baseline)
        for i in range(4)
    ]
    np.testing.assert_allclose(batched, loop, atol=2e-5)
    # one pair at a time gives the same curve as the batch
    _, alone = fa.curves(model, images[2:3], classes[2:3], maps[2:3], metric, 6, baseline)
    np.testing.assert_allclose(alone[0].numpy(), probs[2].numpy(), atol=1e-5)


class Linear(nn.Module):
    """logit of class 0 = <w, x>: the relevance of pixel p is sum_c w_cp x_cp, exactly."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1, keepdim=True)


def test_true_relevance_deletes_fastest_and_inserts_fastest():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 3, 12, 12, generator=g) * 0.3
    model = Linear(w).eval()
    images = torch.randn(8, 3, 12, 12, generator=g)
    classes = torch.zeros(8, dtype=torch.long)
    truth = (images * w).sum(1)  # (P, S, S)
    random = torch.rand(8, 12, 12, generator=g)
    scores = {}
    for name, maps in (("truth", truth), ("random", random), ("reversed", -truth)):
        for metric in ("deletion", "insertion"):
            fracs, probs = fa.curves(model, images, classes, maps, metric, 12, "zero")
            scores[name, metric] = fa.curve_score(fracs, probs)
    # removing the largest contributions first lowers the logit most at every step
    assert (scores["truth", "deletion"] <= scores["random", "deletion"] + 1e-6).all()
    assert scores["random", "deletion"].mean() < scores["reversed", "deletion"].mean()
    assert (scores["truth", "insertion"] >= scores["random", "insertion"] - 1e-6).all()
    assert scores["random", "insertion"].mean() > scores["reversed", "insertion"].mean()


def test_pairs_are_fixed_by_the_data_and_seed_alone():
    labels = (torch.rand(50, 6, generator=torch.Generator().manual_seed(0)) > 0.6).long()
    rows, classes = fa.faithfulness_pairs(labels, 10, seed=3)
    again = fa.faithfulness_pairs(labels, 10, seed=3)
    assert torch.equal(rows, again[0]) and torch.equal(classes, again[1])
    assert (labels[rows, classes] == 1).all() and (rows.diff() >= 0).all()
    assert not torch.equal(rows, fa.faithfulness_pairs(labels, 10, seed=4)[0])


def test_directions_decide_the_verdicts():
    assert fa.higher_is_better("gradcam insertion") and fa.higher_is_better("map_class")
    assert not fa.higher_is_better("gradcam deletion")
    assert not fa.higher_is_better("ebp road")
    assert verdict(-0.03, -0.01, higher_is_better=False) == "better"
    assert verdict(0.01, 0.03, higher_is_better=False) == "worse"
    frame = pd.DataFrame(
        {
            "stage": ["distill"] * 6,
            "width_div": [4] * 6,
            "method": ["KD", "KD+SWA"] * 3,
            "teacher_seed": [0] * 6,
            "seed": [0, 0, 1, 1, 2, 2],
            "gradcam deletion": [0.30, 0.20, 0.31, 0.22, 0.29, 0.20],
            "gradcam insertion": [0.50, 0.60, 0.52, 0.61, 0.49, 0.62],
        }
    )
    effects = effects_table(frame).set_index("metric")
    assert effects.loc["gradcam deletion", "diff"] < 0
    assert effects.loc["gradcam deletion", "verdict"] == "better"
    assert effects.loc["gradcam insertion", "verdict"] == "better"


def test_settings_name_the_field_at_fault():
    with pytest.raises(ValueError, match="faith_baseline"):
        EvalConfig(profile="smoke", checkpoint="x.pt", faith_baseline="noise")
    with pytest.raises(ValueError, match="faith_metrics"):
        EvalConfig(profile="smoke", checkpoint="x.pt", faith_metrics=("deletionn",))
    with pytest.raises(ValueError, match="faith_steps"):
        EvalConfig(profile="smoke", checkpoint="x.pt", faith_steps=1)
    assert fa.Faithfulness().names() == ["deletion", "insertion"]  # road is opt-in
    assert fa.Faithfulness(metrics=("road",)).names() == ["road"]


def test_faithfulness_table_scores_every_method_on_the_same_pairs():
    class Data:
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.images = torch.randn(6, 3, 32, 32, generator=g)
            self.labels = torch.tensor([[1, 0, 1, 0, 0]] * 3 + [[0, 1, 0, 0, 1]] * 3)
            self.ids = [f"im{i}" for i in range(6)]

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return self.images[i], self.labels[i], torch.zeros(32, 32, dtype=torch.uint8)

    model = random_vgg(num_classes=5, input_size=32, seed=1).eval()
    settings = fa.Faithfulness(pairs=5, steps=4)
    table, curves = fa.faithfulness_table(model, Data(), ["gradcam", "ebp"], settings)
    assert len(table) == 10 and set(table["method"]) == {"gradcam", "ebp"}
    first, second = (table[table["method"] == m] for m in ("gradcam", "ebp"))
    assert list(first["image"]) == list(second["image"])
    assert table[["deletion", "insertion"]].notna().all().all()
    assert len(curves["gradcam"]["deletion"]["mean"]) == 5  # fractions 0 .. 1 in 4 steps
    means = fa.summarize(table)
    assert means["ebp"]["insertion"] == pytest.approx(second["insertion"].mean())


def test_randomisation_check_randomises_more_layers_at_each_step():
    class Data:
        labels = torch.tensor([[1, 0, 1, 0, 0]] * 4)

        def __len__(self):
            return 4

        def __getitem__(self, i):
            image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i))
            return image, self.labels[i], torch.zeros(32, 32, dtype=torch.uint8)

    model = random_vgg(num_classes=5, input_size=32, seed=2).eval()
    before = [p.clone() for p in model.parameters()]
    frame = randomisation_check(model, Data(), ["gradcam"], fa.Faithfulness(pairs=4, steps=4))
    assert list(frame["layers_randomised"]) == sorted(set(frame["layers_randomised"]))
    assert frame["layers_randomised"].iloc[0] == 0
    assert frame["layers_randomised"].iloc[-1] == frame["of"].iloc[0] == 14  # 13 conv + 1 fc
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    trained = fa.faithfulness_table(model, Data(), ["gradcam"], fa.Faithfulness(pairs=4, steps=4))
    assert frame.iloc[0]["deletion"] == pytest.approx(trained[0]["deletion"].mean())


def test_insertion_minus_deletion_cancels_a_uniform_shift():
    scores = {"auc": 0.9, "deletion": 0.20, "insertion": 0.50}
    assert fa.with_derived(scores)["ins_del"] == pytest.approx(0.30)
    assert "ins_del" not in fa.with_derived({"deletion": 0.2})
    shifted = {k: v + 0.1 for k, v in scores.items()}  # a surer network: both curves lifted
    assert fa.with_derived(shifted)["ins_del"] == pytest.approx(0.30)
    assert fa.higher_is_better("gradcam ins_del")
    assert fa.score_names()[-1] == "ins_del"
    from attrlib.evaluate import summary_frame

    row = summary_frame(
        [
            {
                "checkpoint": "a/best.pt",
                **dict.fromkeys(("map_class", "map_sample", "f1", "sparsity"), 0.5),
                "params": 1,
                "macs": 1,
                "localization": {"gradcam": scores},
            }
        ]
    ).iloc[0]
    assert row["gradcam ins_del"] == pytest.approx(0.30)


def test_faithfulness_forest_plot_wraps_its_panels():
    from attrlib.plots import forest_plot

    metrics = ["gradcam deletion", "gradcam insertion", "ebp deletion", "ebp insertion"]
    effects = pd.DataFrame(
        [
            {
                "stage": "distill",
                "setting": "x4",
                "method": "KD+SWA",
                "metric": m,
                "diff": 0.01,
                "ci_low": -0.01,
                "ci_high": 0.03,
                "verdict": "no clear change",
            }
            for m in metrics
        ]
    )
    fig = forest_plot(effects, metrics, columns=2)
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == 4 and len({round(ax.get_position().y0, 3) for ax in shown}) == 2
    assert "lower is better" in shown[0].get_title()
    assert "higher is better" in shown[1].get_title()


def test_shared_ends_read_each_unperturbed_and_fully_perturbed_image_once():
    class Counting(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.rows = net, 0

        def forward(self, x):
            self.rows += len(x)
            return self.net(x)

    model = Counting(random_vgg(num_classes=5, input_size=32, seed=3)).eval()
    g = torch.Generator().manual_seed(0)
    images, classes = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 2, 4])
    maps = [torch.rand(3, 32, 32, generator=g) for _ in range(2)]
    for metric, points in (("deletion", 5), ("road", 4)):
        alone = [fa.curves(model, images, classes, m, metric, 4)[1] for m in maps]
        model.rows, ends = 0, {}
        shared = [fa.curves(model, images, classes, m, metric, 4, ends=ends)[1] for m in maps]
        ends_count = 2 if metric == "deletion" else 1  # fractions 0 and 1; ROAD stops before 1
        assert model.rows == 3 * (2 * points - ends_count)
        for a, b in zip(alone, shared, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # batch-size rounding
