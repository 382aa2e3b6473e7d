"""Figures shared by the notebooks: training curves, data samples, attribution grids, GIFs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from attrlib.data import MEAN, STD
from attrlib.distributed import is_main
from attrlib.io import write_atomic


def denormalize(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) normalised -> (B, H, W, 3) floats in [0, 1] for imshow."""
    mean = torch.tensor(MEAN, device=images.device)[None, :, None, None]
    std = torch.tensor(STD, device=images.device)[None, :, None, None]
    return (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def plot_history(history: Sequence[dict], title: str = "") -> plt.Figure:
    """Training loss and validation mAP per epoch, side by side."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.5))
    shares = {"train_dead_maps": "train: student maps all zero"}  # fractions: drawn on the 0-1 axis
    for key in sorted(k for k in history[0] if k.startswith("train_") and k not in shares):
        ax_loss.plot(
            epochs, [r[key] for r in history], marker="o", label=key.removeprefix("train_")
        )
    ax_loss.plot(epochs, [r["val_loss"] for r in history], marker="s", ls="--", label="val loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax_loss.legend(fontsize=8)
    for key, label in (("val_map_class", "class mAP"), ("val_map_sample", "per-sample mAP")):
        ax_map.plot(epochs, [r[key] for r in history], marker="o", label=label)
    for key, label in shares.items():
        if key in history[0]:
            ax_map.plot(epochs, [r[key] for r in history], ls=":", color="k", label=label)
    ax_map.set(xlabel="epoch", ylabel="mAP / share", ylim=(0, 1), title="validation")
    ax_map.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_samples(
    images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
) -> plt.Figure:
    """Images (B,3,H,W) over their class masks (B,H,W; 255 void) with the label names."""
    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    pictures = denormalize(images)
    cmap = plt.get_cmap("tab20", len(classes) + 1)
    for i in range(n):
        names = [classes[k] for k in torch.nonzero(labels[i]).flatten().tolist()]
        axes[0, i].imshow(pictures[i])
        axes[0, i].set_title(", ".join(names), fontsize=8)
        mask = masks[i].cpu().numpy().astype(float)
        shown = np.ma.masked_where(mask == 255, mask)
        axes[1, i].imshow(shown, cmap=cmap, vmin=0, vmax=len(classes), interpolation="nearest")
        axes[1, i].imshow(np.ma.masked_where(mask != 255, mask), cmap="gray", vmin=0, vmax=255)
        for ax in axes[:, i]:
            ax.axis("off")
    axes[1, 0].set_title("mask (white = void)", fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | Path, formats: Sequence[str] = ("png",)) -> None:
    """Save a figure under `path` (suffix replaced per format); in a run of several
    processes only rank 0 saves it."""
    path = Path(path)
    if not is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        fig.savefig(path.with_suffix(f".{fmt}"), dpi=150, bbox_inches="tight")


def figure_pixels(fig: plt.Figure) -> np.ndarray:
    """(H, W, 3) uint8 RGB rendering of `fig` at its own size: one frame of an animation."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_animation(
    frames: Sequence[np.ndarray], path: str | Path, seconds_per_frame: float = 1.0
) -> Path:
    """Write equal-sized (H, W, 3) uint8 frames to `path` as a looping GIF (atomically)."""
    import imageio.v3 as iio

    shapes = {frame.shape for frame in frames}
    if not frames or len(shapes) != 1:
        raise ValueError(f"need at least one frame, all of one shape; got shapes {shapes}")
    stack = np.stack(frames)  # (T, H, W, 3)
    duration = round(1000 * seconds_per_frame)  # milliseconds per frame
    return write_atomic(
        path, lambda tmp: iio.imwrite(tmp, stack, extension=".gif", duration=duration, loop=0)
    )


def attribution_grid(
    image: torch.Tensor,
    maps: dict[str, dict[str, torch.Tensor]],
    title: str = "",
) -> plt.Figure:
    """Rows = models, columns = the image then each method's (H, W) map over it."""
    models = list(maps)
    methods = list(maps[models[0]])
    picture = denormalize(image[None])[0]
    fig, axes = plt.subplots(
        len(models),
        len(methods) + 1,
        figsize=(2.0 * (len(methods) + 1), 2.0 * len(models)),
        squeeze=False,
    )
    for r, name in enumerate(models):
        axes[r, 0].imshow(picture)
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
        for c, method in enumerate(methods, start=1):
            axes[r, c].imshow(picture)
            axes[r, c].imshow(maps[name][method].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if r == 0:
                axes[r, c].set_title(method, fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def auc_histograms(pairs, column: str = "auc", hue: str = "model") -> plt.Figure:
    """Histogram of a per-(image, class) score for each method, one colour per model."""
    import seaborn as sns

    methods = list(dict.fromkeys(pairs["method"]))
    if not methods:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no scored (image, class) pairs", ha="center", va="center")
        ax.axis("off")
        return fig
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        sns.histplot(
            pairs[pairs["method"] == method],
            x=column,
            hue=hue,
            ax=ax,
            bins=20,
            binrange=(0, 1),
            element="step",
            stat="density",
            common_norm=False,
            legend=ax is axes[0, -1],
        )
        ax.set_title(method)
    fig.tight_layout()
    return fig
