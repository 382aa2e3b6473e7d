"""Figures shared by the notebooks: training curves, data samples, attribution grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from attrlib.data import MEAN, STD


def denormalize(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) normalised -> (B, H, W, 3) floats in [0, 1] for imshow."""
    mean = torch.tensor(MEAN, device=images.device)[None, :, None, None]
    std = torch.tensor(STD, device=images.device)[None, :, None, None]
    return (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def plot_history(history: Sequence[dict], title: str = "") -> plt.Figure:
    """Training loss and validation mAP per epoch, side by side."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in sorted(k for k in history[0] if k.startswith("train_")):
        ax_loss.plot(epochs, [r[key] for r in history], marker="o", label=key.removeprefix("train_"))
    ax_loss.plot(epochs, [r["val_loss"] for r in history], marker="s", ls="--", label="val loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax_loss.legend(fontsize=8)
    for key, label in (("val_map_class", "class mAP"), ("val_map_sample", "per-sample mAP")):
        ax_map.plot(epochs, [r[key] for r in history], marker="o", label=label)
    ax_map.set(xlabel="epoch", ylabel="mAP", ylim=(0, 1), title="validation")
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
    """Save a figure under `path` (suffix replaced per format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        fig.savefig(path.with_suffix(f".{fmt}"), dpi=150, bbox_inches="tight")
