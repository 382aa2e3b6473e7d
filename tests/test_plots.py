import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from attrlib.data import MEAN, STD
from attrlib.plots import (
    attribution_grid,
    auc_histograms,
    plot_history,
    save_figure,
    score_label,
)
from attrlib.synthvoc import render

METHODS = ("gradcam", "ebp", "lrp", "rap")


def _study_image(size: int = 96) -> torch.Tensor:
    """(3, size, size) normalised: a synthetic VOC image as the default study reads it
    (rendered at 120 px, stored as JPEG, resized bilinear with antialiasing)."""
    stored = io.BytesIO()
    Image.fromarray(render(1, 0, 120)[0]).save(stored, format="jpeg", quality=95, subsampling=0)
    pixels = np.array(Image.open(stored).convert("RGB"))  # (h, w, 3) uint8
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255  # (1, 3, h, w)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)[0]  # (3, S, S)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def _study_maps(image: torch.Tensor, models: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Normalised maps shaped like the study's: Grad-CAM and EBP read at the 6x6 attribution
    layer and upsampled; LRP and RAP at input resolution, on the image's edges."""
    size = image.shape[-1]
    g = torch.Generator().manual_seed(0)
    grey = image.mean(0)  # (S, S)
    edges = F.pad(
        (grey[1:, 1:] - grey[:-1, 1:]).abs() + (grey[1:, 1:] - grey[1:, :-1]).abs(), (1, 0, 1, 0)
    )

    def coarse(n: int) -> torch.Tensor:
        cells = torch.rand(1, 1, n, n, generator=g) ** 2  # (1, 1, n, n)
        return F.interpolate(cells, size=(size, size), mode="bilinear")[0, 0]  # (S, S)

    def normalised(m: torch.Tensor) -> torch.Tensor:
        return (m - m.min()) / (m.max() - m.min())

    return {
        model: {
            "gradcam": normalised(coarse(6)),
            "ebp": normalised(coarse(6)),
            "lrp": normalised(edges * torch.rand(size, size, generator=g)),
            "rap": normalised(0.5 * edges + coarse(12)),
        }
        for model in models
    }


def _row_labels(fig: plt.Figure) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]


def test_score_labels_name_the_method_and_say_higher_is_better():
    assert score_label("gradcam auc") == "Grad-CAM AUC (higher is better)"
    assert score_label("map_class") == "class mAP (higher is better)"
    assert score_label("rap pointing", sep="\n") == "RAP pointing game\n(higher is better)"
    # a plugin's method keeps its name; a score the study does not know gets no direction
    assert score_label("gradient_x_input auc") == "gradient_x_input AUC (higher is better)"
    assert score_label("gradcam entropy") == "Grad-CAM entropy"


def test_attribution_grid_rows_keep_their_order_and_share_a_colour_bar():
    image = torch.zeros(3, 16, 16)
    models = ["teacher", "KD (x4)", "KD+SWA (x4)", "naive (rate 0.7)", "SWA (rate 0.7)"]
    maps = {m: {"gradcam": torch.rand(16, 16), "lrp": torch.rand(16, 16)} for m in models}
    fig = attribution_grid(image, maps, title="one image")
    assert _row_labels(fig) == models
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_xlim() == (0.0, 1.0)
    assert "normalised" in bars[0].get_xlabel()
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles == ["image", "Grad-CAM", "LRP"]
    plt.close(fig)


def test_attribution_grid_frames_keep_one_size_whatever_the_title():
    """The schedule animation stacks grids with different titles into one GIF."""
    maps = {m: {"gradcam": torch.rand(8, 8)} for m in ("naive", "SWA")}
    sizes = set()
    for title in ("iteration 0", "iteration 16 · a much longer title than the first one"):
        fig = attribution_grid(torch.zeros(3, 8, 8), maps, title=title)
        fig.canvas.draw()
        sizes.add(fig.canvas.get_width_height())
        plt.close(fig)
    assert len(sizes) == 1


def test_saved_qualitative_grid_of_the_default_study_is_under_a_megabyte(tmp_path):
    """Ten models (the default study's teacher, 4 students, 3 one-shot and 2 iterative
    models) x 4 methods at 96 px, as notebook 06 saves it."""
    image = _study_image()
    models = ["teacher", *(f"model {i}" for i in range(9))]
    fig = attribution_grid(image, _study_maps(image, models), title="2012_000001 · class 'heart'")
    save_figure(fig, tmp_path / "qualitative", formats=("png",))
    plt.close(fig)
    path = tmp_path / "qualitative.png"
    size = path.stat().st_size
    assert size < 1_000_000, f"{size / 1e6:.2f} MB"
    saved = Image.open(path)
    assert saved.mode == "RGB"
    assert min(saved.size) > 800  # not shrunk into illegibility to pass the size bar


def test_auc_histograms_say_what_is_scored_and_its_direction():
    rng = np.random.default_rng(0)
    pairs = pd.DataFrame(
        {
            "method": np.repeat(["gradcam", "lrp"], 20),
            "model": np.tile(["teacher", "student"], 20),
            "auc": rng.uniform(0, 1, 40),
        }
    )
    fig = auc_histograms(pairs)
    axes = fig.axes[:2]
    assert [ax.get_title() for ax in axes] == ["Grad-CAM", "LRP"]
    assert all(ax.get_xlabel() == "AUC\n(higher is better)" for ax in axes)
    assert all(ax.get_ylabel() == "density of (image, class) pairs" for ax in axes)
    plt.close(fig)


def test_training_curves_say_which_way_is_better():
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_map_class": 0.5 + e / 10}
        | {"val_map_sample": 0.5}
        for e in (1, 2)
    ]
    fig = plot_history(history)
    loss, val = fig.axes[:2]
    assert "lower is better" in loss.get_ylabel() and "higher is better" in val.get_ylabel()
    plt.close(fig)


@pytest.mark.parametrize("fmt", ["png", "pdf"])
def test_save_figure_writes_each_format(tmp_path, fmt):
    fig = plt.figure(figsize=(2, 1))
    save_figure(fig, tmp_path / "f.anything", formats=(fmt,))
    plt.close(fig)
    assert (tmp_path / f"f.{fmt}").stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_schedule_curve_spaces_the_iterations_on_a_log_axis_of_weights_left():
    from attrlib.plots import schedule_curve

    records = [
        {"sparsity": 1 - 0.8**k, "best": {"val_map_class": 0.9 - 0.02 * k}} for k in range(1, 9)
    ]
    fig = schedule_curve(records, title="iterative · swa")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    left, right = ax.get_xlim()
    assert left > right  # pruning goes to the right
    x, y = ax.lines[0].get_data()
    assert list(x) == pytest.approx([0.8**k for k in range(1, 9)])
    assert list(y) == pytest.approx([0.9 - 0.02 * k for k in range(1, 9)])
    assert "higher is better" in ax.get_ylabel()
    plt.close(fig)
