"""mIoU from one confusion matrix (das.metrics), against a hand-computed example."""

from __future__ import annotations

import math

import pytest
import torch

from das.metrics import ConfusionMatrix


def test_against_a_hand_computed_confusion_matrix():
    # classes 0..3, 255 ignored; class 3 appears nowhere
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 0]]])
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(predicted, target)
    # rows truth, columns prediction: 0 -> {0: 2, 1: 1}; 1 -> {1: 2}; 2 -> {2: 1, 0: 1}
    expected = torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.matrix, expected)
    # IoU: 0: 2 / (3 + 3 - 2) = 1/2; 1: 2 / (3 + 2 - 2) = 2/3; 2: 1 / (2 + 1 - 1) = 1/2
    iou = cm.class_iou()
    assert iou[:3] == pytest.approx([1 / 2, 2 / 3, 1 / 2]) and math.isnan(iou[3])
    assert cm.miou == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert cm.pixel_accuracy == pytest.approx(5 / 7)
    assert cm.absent_classes() == [3]


def test_logits_accumulate_over_batches():
    cm = ConfusionMatrix(3)
    target = torch.randint(0, 3, (2, 5, 6))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    cm.update(logits, target)
    cm.update(logits[:1], target[:1])
    assert cm.miou == 1.0 and int(cm.matrix.sum()) == 3 * 30


def test_values_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match="outside 0..2"):
        ConfusionMatrix(3).update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
