"""Segmentation networks (das.models.segmentation): dilation, heads, un-warp, aux head."""

from __future__ import annotations

import pytest
import torch

from das.cell import DASCell, DiscreteCell, Genotype
from das.models import build_backbone
from das.models.segmentation import SegmentationNetwork, dilate


def _net(cell, head="psp", output_stride=8, arch="resnet_tiny", fusion="gsf", frames=4, **kw):
    backbone = build_backbone(arch, 5, 3, frames=frames, fusion=fusion, stem="imagenet")
    return SegmentationNetwork(cell, backbone, head, 5, output_stride, **kw)


@pytest.mark.parametrize("arch", ["resnet_tiny", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_backbone_keeps_the_output_stride(arch, output_stride):
    backbone = dilate(build_backbone(arch, 5, 3, stem="imagenet"), output_stride)
    x = backbone.stem(torch.randn(1, 3, 64, 96))
    for stage in backbone.stages:
        x = stage(x)
    assert x.shape[-2:] == (64 // output_stride, 96 // output_stride)


@pytest.mark.parametrize("head", ["psp", "deeplabv3"])
def test_logits_at_input_size_and_aux_only_in_training(head):
    net = _net(DiscreteCell(Genotype(("translate_x",) * 3, nodes=2)), head)
    x = torch.randn(2, 3, 37, 45)
    result = net(x)
    assert result["out"].shape == result["aux"].shape == (2, 5, 37, 45)
    assert result["coverage"].shape == (2, 1, 37, 45)
    assert net.frames(x).shape == (2, 4, 5, 37, 45)
    net.eval()
    assert "aux" not in net(x)


def test_unwarp_false_is_the_frame_mean_and_true_is_the_cells_unwarp():
    cell = DiscreteCell(Genotype(("translate_x", "scale", "rotate"), nodes=2))
    torch.manual_seed(0)
    net = _net(cell).eval()
    x = torch.randn(1, 3, 32, 40)
    frames = net.frames(x)
    torch.testing.assert_close(net(x)["out"], cell.unwarp(frames)[0])
    net.unwarp = False
    torch.testing.assert_close(net(x)["out"], frames.mean(1))


def test_two_d_network_and_gradients_reach_tau():
    plain = _net(None, fusion="none", frames=1)
    assert plain(torch.randn(2, 3, 24, 24))["out"].shape == (2, 5, 24, 24)
    cell = DASCell(frames=4, nodes=2)
    net = _net(cell, head="deeplabv3", output_stride=16)
    net(torch.randn(2, 3, 32, 32))["out"].sum().backward()
    assert cell.tau.grad is not None and bool(cell.tau.grad.abs().sum() > 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="head"):
        _net(None, head="fcn", fusion="none", frames=1)
    with pytest.raises(ValueError, match="output stride"):
        _net(None, output_stride=32, fusion="none", frames=1)
    with pytest.raises(ValueError, match="imagenet stem"):
        dilate(build_backbone("resnet_tiny", 5, 3, stem="cifar"), 8)
