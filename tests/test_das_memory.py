"""memory="lean" (das.models.memory): blocks recomputed in the backward give exactly the
numbers of memory="normal" and save a fraction of the activations."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from das_testing import saved_bytes

from das.cell import DASCell
from das.models import VideoNetwork, build_backbone
from das.models.segmentation import SegmentationNetwork


def _pair(fusion: str, frames: int = 4):
    torch.manual_seed(0)
    net = VideoNetwork(
        DASCell(frames=frames, nodes=2),
        build_backbone("resnet_tiny", 10, 3, frames=frames, fusion=fusion),
    )
    lean = copy.deepcopy(net)
    lean.backbone.memory = "lean"
    return net, lean


def _step(net, x, y):
    net.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("fusion", ["gsf", "tsm", "none"])
def test_lean_gives_identical_losses_gradients_and_statistics(fusion):
    normal, lean = _pair(fusion)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for _ in range(2):
        assert torch.equal(_step(normal, x, y), _step(lean, x, y))
    for (name, a), b in zip(normal.named_parameters(), lean.parameters()):
        assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(normal.named_buffers(), lean.buffers()):
        assert torch.equal(a, b), name  # running statistics updated once per step, not twice


def test_lean_saves_a_fraction_of_the_activations():
    normal, lean = _pair("gsf", frames=8)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    ratio = saved_bytes(lambda: _step(lean, x, y)) / saved_bytes(lambda: _step(normal, x, y))
    assert ratio < 0.35, ratio


def test_lean_segmentation_matches_normal():
    torch.manual_seed(0)
    backbone = build_backbone("resnet_tiny", 5, 3, frames=4, fusion="gsf", stem="imagenet")
    net = SegmentationNetwork(DASCell(frames=4, nodes=1), backbone, "psp", 5)
    lean = copy.deepcopy(net)
    lean.backbone.memory = "lean"
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for model in (net, lean):
        torch.manual_seed(1)  # the heads' dropout draws the same masks
        result = model(x)
        (result["out"].square().mean() + result["aux"].square().mean()).backward()
        outs.append((result["out"].detach(), model.cell.tau.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_unknown_memory_mode():
    net = build_backbone("resnet_tiny", 10, 3)
    net.memory = "tiny"
    with pytest.raises(ValueError, match="memory must be one of"):
        net(torch.randn(1, 3, 16, 16))


def _log_without_timings(path) -> list[dict]:
    timing = {"sec_per_step", "sec_arch_step", "sec_weight_step", "epoch_sec", "seconds"}
    rows = json.loads(path.read_text())
    rows = rows if isinstance(rows, list) else rows.get("epochs", rows)
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]


@pytest.mark.parametrize("order", ["1", "2"])
def test_lean_search_gives_the_normal_search(tmp_path, order):
    from das_testing import TINY_DATA

    from das import search

    base = [*TINY_DATA, "--frames", "2", "--nodes", "2", "--epochs", "2", "--steps-per-epoch"]
    base += ["2", "--fusion", "gsf", "--order", order, "--eval-images", "16"]
    for memory in ("normal", "lean"):
        assert search.main([*base, "--memory", memory, "--out", str(tmp_path / memory)]) == 0
    normal, lean = tmp_path / "normal", tmp_path / "lean"
    assert (normal / "genotype.json").read_text() == (lean / "genotype.json").read_text()
    assert _log_without_timings(normal / "search_log.json") == _log_without_timings(
        lean / "search_log.json"
    )
    selection = [json.loads((d / "selection.json").read_text()) for d in (normal, lean)]
    assert selection[0] == selection[1]
