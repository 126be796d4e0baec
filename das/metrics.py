"""Segmentation metrics from one confusion matrix over a whole split.

``ConfusionMatrix(classes, ignore_index)``: ``update(logits_or_labels, target)`` adds pixels
(ignore pixels excluded); ``miou``, ``pixel_accuracy``, ``class_iou``. A class absent from both
the truth and the predictions has no IoU (NaN in ``class_iou``) and is left out of the mean.
Under torch.distributed, ``all_reduce`` sums the matrices of all ranks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """``matrix[t, p]``: pixels of true class t predicted as p (int64, on `device`)."""

    def __init__(self, classes: int, ignore_index: int = 255, device: str | torch.device = "cpu"):
        if classes < 1:
            raise ValueError(f"classes must be >= 1, got {classes}")
        self.classes, self.ignore_index = classes, ignore_index
        self.matrix = torch.zeros(classes, classes, dtype=torch.long, device=device)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """``prediction``: logits (B, classes, H, W) or labels (B, H, W); ``target`` (B, H, W)."""
        labels = prediction.argmax(1) if prediction.dim() == target.dim() + 1 else prediction
        if labels.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(labels.shape)} and target {tuple(target.shape)} differ"
            )
        keep = target != self.ignore_index
        t, p = target[keep].long(), labels[keep].long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.classes):
            raise ValueError(
                f"target holds values outside 0..{self.classes - 1} that are not the ignore "
                f"id {self.ignore_index}"
            )
        index = (t * self.classes + p).to(self.matrix.device)
        self.matrix += torch.bincount(index, minlength=self.classes**2).view_as(self.matrix)

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def class_iou(self) -> list[float]:
        """IoU per class; NaN for a class absent from both truth and prediction."""
        m = self.matrix.double()
        hits = m.diag()
        union = m.sum(0) + m.sum(1) - hits
        return [float(h / u) if u > 0 else math.nan for h, u in zip(hits, union)]

    @property
    def miou(self) -> float:
        present = [v for v in self.class_iou() if not math.isnan(v)]
        return sum(present) / len(present) if present else math.nan

    @property
    def pixel_accuracy(self) -> float:
        total = int(self.matrix.sum())
        return int(self.matrix.diag().sum()) / total if total else math.nan

    def absent_classes(self) -> list[int]:
        """Classes left out of the mean (in neither truth nor prediction)."""
        return [c for c, v in enumerate(self.class_iou()) if math.isnan(v)]
