"""A model's predictions on a dataset and the numbers they score: logits in, metrics out.

Below `engine` (per-epoch validation) and `evaluate` (a model's prediction scores): both run
the model with `predict` and score its logits with `prediction_metrics`, so a checkpoint's
validation mAP and its evaluated mAP come from the same pass and the same formulas.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from attrlib.distributed import gather_batches, ranks, shard_batches
from attrlib.metrics import f1_score, mean_average_precision
from attrlib.models import eval_mode


def mixed_precision(device: torch.device):
    """Autocast of training and prediction: bfloat16 (float16 without it) on CUDA, off on CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) float32 and labels (N, K) of a whole (image, labels, ...) dataset, in order.

    The model runs in eval mode (restored afterwards) under `mixed_precision`; the outputs are
    on the CPU. In a run of several processes every rank must call it: each predicts its
    share of the batches (attrlib.distributed.shard_batches) and every rank returns all.
    """
    numbers, batches = shard_batches(len(dataset), batch_size, ranks())
    outputs = []
    with eval_mode(model):
        for number, batch in zip(numbers, DataLoader(dataset, batch_sampler=batches), strict=True):
            # channels-last on every device: oneDNN convolves it up to 2x faster than NCHW at
            # inference on CPU (not in training, whose backward gains little)
            images = batch[0].to(device, non_blocking=True)
            images = images.contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
            with mixed_precision(device):
                logits = model(images).float().cpu()  # (B, K)
            outputs.append((number, (logits, batch[1])))  # (B, K), (B, K)
    logits, labels = zip(*gather_batches(outputs), strict=True)
    return torch.cat(logits), torch.cat(labels)


def prediction_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Every prediction number of the study, from logits (N, K) and 0/1 labels (N, K).

    Returns {"loss": multi-label soft-margin loss (the training loss, SPEC: Training recipes),
    "map_class": class mAP (VOC standard), "map_sample": the authors' per-sample mAP,
    "f1": per-sample F1 at logit > 0.5 (the authors' threshold)}. Callers report the subset
    they log: training validation has no F1, evaluation no loss.
    """
    # bool or integer labels, which mAP and F1 accept, enter the loss as 0/1 floats
    targets = labels if labels.is_floating_point() else labels.to(logits.dtype)
    return {
        "loss": F.multilabel_soft_margin_loss(logits, targets).item(),
        "map_class": mean_average_precision(logits, labels, average="class").item(),
        "map_sample": mean_average_precision(logits, labels, average="sample").item(),
        "f1": f1_score(logits, labels, threshold=0.5).item(),
    }
