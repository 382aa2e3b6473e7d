"""The notebooks' teaching figures: filter counts per conv, teacher-vs-student matching maps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from attrlib.attribution import upsample
from attrlib.distill import attribution_maps, matching_loss
from attrlib.metrics import normalize_maps
from attrlib.models import vgg16_bn_voc
from attrlib.plots import filter_counts, matching_map_figure
from attrlib.prune import structured_prune


def test_filter_counts_bar_heights_are_the_widths():
    fig = filter_counts([8, 8, 16], [4, 8, 12], title="p=0.5")
    ax = fig.axes[0]
    before, after = ax.containers
    assert [p.get_height() for p in before] == [8, 8, 16]
    assert [p.get_height() for p in after] == [4, 8, 12]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "conv2", "conv3"]
    assert [t.get_text() for t in ax.texts] == ["4", "8", "12"]  # counts over the after-bars
    assert ax.get_title() == "p=0.5: 24 of 32 filters kept (75%)"
    plt.close(fig)


def test_filter_counts_of_a_pruned_network():
    model = vgg16_bn_voc(16, num_classes=3, input_size=32)
    pruned = structured_prune(model, 0.5)
    fig = filter_counts(model.config.widths, pruned.config.widths)
    before, after = fig.axes[0].containers
    assert len(before) == len(after) == 13
    # the paper's schedule: the first conv and the last six lose half, the rest nothing
    kept = [p.get_height() / q.get_height() for p, q in zip(after, before, strict=True)]
    assert kept == [0.5] + [1.0] * 6 + [0.5] * 6
    plt.close(fig)


def test_filter_counts_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="one count per conv"):
        filter_counts([8, 8], [4])
    with pytest.raises(ValueError, match="names"):
        filter_counts([8, 8], [4, 4], names=["a"])


@pytest.fixture
def pair():
    torch.manual_seed(0)
    teacher = vgg16_bn_voc(8, num_classes=4, input_size=64).eval()
    student = vgg16_bn_voc(16, num_classes=4, input_size=64).train()
    image = torch.randn(3, 64, 64)
    return teacher, student, image


def test_matching_map_figure_has_a_row_per_network_and_a_column_per_matching(pair):
    teacher, student, image = pair
    fig = matching_map_figure(teacher, student, image, "attribution", classes=list("abcd"))
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(grid) == 2 * 3  # (teacher, student) x (image, EWA, SWA)
    assert grid[1].get_ylabel() == "teacher" and grid[4].get_ylabel() == "student"
    titles = [ax.get_title() for ax in grid[1:3]]
    assert titles[0].startswith("EWA · loss ") and titles[1].startswith("SWA · loss ")
    assert "'attribution' layer (4x4)" in fig.get_suptitle()
    assert student.training  # its own mode is given back
    plt.close(fig)


def test_matching_map_figure_draws_the_maps_and_loss_the_objective_compares(pair):
    teacher, student, image = pair
    fig = matching_map_figure(teacher, student, image, "attribution", matchings=["swa"])
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    student.eval()
    target = teacher(image[None]).argmax(dim=1)  # (1,) the teacher's top-1 class
    t_maps = attribution_maps(teacher, image[None], target, "swa").detach()  # (1, 4, 4)
    s_maps = attribution_maps(student, image[None], target, "swa").detach()
    for ax, maps in ((grid[1], t_maps), (grid[3], s_maps)):
        drawn = np.asarray(ax.images[1].get_array())  # over the image: the map
        expected = normalize_maps(upsample(maps, (64, 64)))[0].numpy()
        np.testing.assert_allclose(drawn, expected, atol=1e-6)
    loss = float(matching_loss(s_maps, t_maps))
    assert grid[1].get_title() == f"SWA · loss {loss:.3g}"
    plt.close(fig)


def test_matching_map_figure_at_the_pooled_layer(pair):
    teacher, student, image = pair
    fig = matching_map_figure(teacher, student, image, "pool", matchings=["ewa"])
    assert "'pool' layer (2x2)" in fig.get_suptitle()
    plt.close(fig)


def test_matching_map_figure_names_a_dead_map(pair):
    teacher, student, image = pair
    with torch.no_grad():
        teacher.classifier[-1].weight.zero_()  # no gradient: SWA's channel weights are all 0
    fig = matching_map_figure(teacher, student, image, "attribution", matchings=["swa", "ewa"])
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert grid[1].get_title().endswith("\nteacher map = 0")
    assert "\n" not in grid[2].get_title()  # EWA: squares of a live feature
    plt.close(fig)
