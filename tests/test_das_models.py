"""Video backbones: every arch and fusion runs, temporal modules sit where their authors put
them, logits are averaged over frames; the ablation variants."""

import pytest
import torch

from das.cell import Genotype, random_genotype
from das.models import FUSIONS, VideoNetwork, build_backbone
from das.models.resnet import BasicBlock, Bottleneck
from das.variants import VARIANTS, build_network
from das_kernels.colour import colour_transform


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("arch", ["resnet_tiny", "resnet18", "resnet50"])
def test_arch_fusion_forward_backward(arch, fusion):
    torch.manual_seed(0)
    width = 1.0 if arch == "resnet_tiny" else 0.25
    model = build_backbone(arch, 7, 3, frames=4, fusion=fusion, image_size=16, width_mult=width)
    video = torch.randn(2, 4, 3, 16, 16)
    out = model(video)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_resnet34_builds():
    model = build_backbone("resnet34", 10, 3, frames=2, fusion="none", width_mult=0.25)
    assert [len(s) for s in model.stages] == [3, 4, 6, 3]
    assert model(torch.randn(1, 2, 3, 16, 16)).shape == (1, 10)


def test_imagenet_stem_for_large_images():
    model = build_backbone("resnet_tiny", 5, 3, image_size=96)
    assert isinstance(model.stem[-1], torch.nn.MaxPool2d)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 5)


def _call_order(block, x):
    order = []
    names = ("conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "gsf", "shift")
    hooks = [
        getattr(block, n).register_forward_hook(lambda *_, n=n: order.append(n))
        for n in names
        if getattr(block, n, None) is not None
    ]
    block(x)
    for h in hooks:
        h.remove()
    return order


def test_gsf_placement():
    basic = BasicBlock(16, 16, fusion="gsf", frames=2)
    assert _call_order(basic, torch.randn(4, 16, 8, 8)) == ["conv1", "bn1", "conv2", "gsf", "bn2"]
    bottle = Bottleneck(64, 16, fusion="gsf", frames=2)
    assert _call_order(bottle, torch.randn(4, 64, 8, 8)) == [
        "conv1",
        "bn1",
        "conv2",
        "bn2",
        "conv3",
        "gsf",
        "bn3",
    ]
    assert basic.gsf.fPlane == 4 and bottle.gsf.fPlane == 16  # ratio 25 %


def test_tsm_placement_residual_shift():
    block = BasicBlock(16, 16, fusion="tsm", frames=2)
    assert _call_order(block, torch.randn(4, 16, 8, 8))[:2] == ["shift", "conv1"]
    # the identity path is not shifted: with the residual branch zeroed the block is relu(x)
    torch.nn.init.zeros_(block.bn2.weight)
    x = torch.randn(4, 16, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_logits_are_frame_averages():
    torch.manual_seed(0)
    model = build_backbone("resnet_tiny", 10, 1, frames=3, fusion="none").eval()
    video = torch.randn(2, 3, 1, 16, 16)
    per_frame = torch.stack([model(video[:, t]) for t in range(3)], 1)
    torch.testing.assert_close(model(video), per_frame.mean(1), atol=1e-5, rtol=1e-5)


def test_frame_count_mismatch_is_an_error():
    model = build_backbone("resnet_tiny", 10, 1, frames=4, fusion="tsm")
    with pytest.raises(ValueError, match="T=4"):
        model(torch.randn(2, 3, 1, 16, 16))


def test_bad_names():
    with pytest.raises(ValueError, match="unknown arch"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="unknown fusion"):
        build_backbone(fusion="lstm")


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants(variant):
    fusion = "tsm"
    g = random_genotype(nodes=2, frames=3, seed=0)
    net = build_network(variant, g, 3, fusion, 10, 1, 16)
    assert isinstance(net, VideoNetwork)
    x = torch.randn(2, 1, 16, 16)
    assert net(x).shape == (2, 10)
    video = net.video(x)
    expected_t = 1 if variant in ("baseline", "augment", "bigkernel", "dilated") else 3
    assert video.shape[1] == expected_t
    net.eval()
    if variant == "augment":  # evaluation sees the middle (untransformed) frame
        torch.testing.assert_close(net.video(x)[:, 0], net.cell.cell(x)[:, 1])
        torch.testing.assert_close(net.video(x)[:, 0], x * 1.5, atol=1e-5, rtol=1e-5)
    if variant == "shuffle":  # a permutation of the DAS frames, fixed in eval
        das_video = net.cell.cell(x)
        shuffled = net.video(x)
        torch.testing.assert_close(shuffled, net.video(x))
        for b in range(2):
            for t in range(3):
                assert any(torch.equal(shuffled[b, t], das_video[b, s]) for s in range(3))


def test_variants_need_genotype():
    with pytest.raises(ValueError, match="needs a genotype"):
        build_network("das", None, 3, "none", 10, 1, 16)


def test_colour_genotype_uses_the_data_normalisation():
    """A genotype with colour ops acts on the pixels that the data's (mean, std) describe."""
    g = Genotype(("brightness",), nodes=1, frames=3)  # one edge: the video is its output
    pixels = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    x = (pixels - 0.3) / 0.2
    net = build_network("das", g, 3, "none", 10, 1, 16, pixel_stats=((0.3,), (0.2,)))
    for t, s_t in enumerate((-1, 0, 1)):
        want = (colour_transform("brightness", pixels, 0.1 * s_t) - 0.3) / 0.2
        torch.testing.assert_close(net.video(x)[:, t], want, atol=1e-5, rtol=1e-5)
    unnormalised = build_network("das", g, 3, "none", 10, 1, 16).video(x)
    assert (unnormalised[:, 0] - net.video(x)[:, 0]).abs().max() > 1e-2
