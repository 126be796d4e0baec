"""Receptive fields (das.rf): Eq. 8, the paper's worked examples, effective fields, metrics."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from das.cell import DiscreteCell, Genotype, ReplicaCell
from das.models import VideoNetwork, build_backbone
from das.rf import (
    bootstrap,
    effective_rf,
    js_divergence,
    layer_geometry,
    layer_specs,
    reshaped_field,
    rf_metrics,
    temporal_modules_passed,
    theoretical_rf,
    unit_centre,
)
from das_kernels import backends


def _frames(*matrices) -> torch.Tensor:
    return torch.tensor(matrices, dtype=torch.float64)


def test_eq8_matches_the_known_resnet_fields():
    assert theoretical_rf([(3, 1)]) == 3
    assert theoretical_rf([(3, 1), (3, 2), (3, 1)]) == 9
    imagenet = {"resnet18": 435, "resnet50": 427}
    for arch, r0 in imagenet.items():
        assert theoretical_rf(layer_specs(build_backbone(arch, 10, 3, stem="imagenet"))) == r0


def test_worked_examples_of_the_paper():
    # one 3x3 conv (r0 = 3), one GSF mixing three frames with steps 0, 1, 2
    shift = _frames(*([[1, 0, s], [0, 1, s]] for s in range(3)))  # 1 px in x and y per step
    assert reshaped_field(3, shift)[0] == pytest.approx(19)
    zoom = _frames(*([[2**s, 0, 0], [0, 2**s, 0]] for s in range(3)))  # gamma = 2 per step
    assert reshaped_field(3, zoom)[0] == pytest.approx(144)
    assert reshaped_field(3, _frames([[1, 0, 0], [0, 1, 0]]))[0] == pytest.approx(9)


def test_temporal_modules_are_counted():
    assert temporal_modules_passed(build_backbone("resnet_tiny", 10, 3, 4, "gsf"), 2) == 2
    assert temporal_modules_passed(build_backbone("resnet_tiny", 10, 3, 4, "none"), 4) == 0


def test_one_conv_erf_is_the_kernel_footprint():
    torch.manual_seed(0)
    weight = torch.randn(1, 3, 3, 3).double()
    weight[0, 0, 1, 1] = 100.0  # the unit is active: relu passes the gradient
    images = torch.ones(2, 3, 9, 9, dtype=torch.float64)
    maps = effective_rf(lambda x: F.conv2d(x, weight), images)
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[3:6, 3:6] = weight[0].abs().sum(0)  # output (3, 3) of 7x7 sees input rows 3..5
    torch.testing.assert_close(maps, expected.expand(2, 9, 9))


def _stage_features(net: VideoNetwork, stage: int):
    def features(x):
        bb = net.backbone
        video = net.video(x)
        f = bb.stem(video.flatten(0, 1))
        for s in list(bb.stages)[:stage]:
            f = bb.run_stage(s, f)
        return f

    return features


def test_replica_without_temporal_modules_equals_the_2d_baseline():
    torch.manual_seed(0)
    backbone = build_backbone("resnet_tiny", 10, 3, frames=3, fusion="none").eval()
    images = torch.randn(4, 3, 16, 16)
    baseline = effective_rf(_stage_features(VideoNetwork(None, backbone), 2), images, 1)
    replica_net = VideoNetwork(ReplicaCell(3), copy.deepcopy(backbone))
    replica = effective_rf(_stage_features(replica_net, 2), images, 3)
    torch.testing.assert_close(replica, baseline)


def test_gradients_reach_the_image_through_fused_and_reference_ops():
    torch.manual_seed(0)
    genotype = Genotype(("translate_x", "rotate", "scale"), nodes=2, frames=3)
    net = VideoNetwork(
        DiscreteCell(genotype), build_backbone("resnet_tiny", 10, 3, frames=3, fusion="gsf")
    ).eval()
    images = torch.randn(2, 3, 16, 16)
    maps = {}
    for backend in ("reference", "cpp"):
        with backends.use(backend):
            maps[backend] = effective_rf(_stage_features(net, 3), images, 3)
    assert bool(maps["cpp"].sum() > 0)
    torch.testing.assert_close(maps["cpp"], maps["reference"], rtol=1e-4, atol=1e-6)


def test_metrics_on_synthetic_maps():
    size, c = 81, 40.0
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
        indexing="ij",
    )  # fmt: skip
    a = math.radians(30)
    u = (xx - c) * math.cos(a) + (yy - c) * math.sin(a)
    v = -(xx - c) * math.sin(a) + (yy - c) * math.cos(a)
    elongated = torch.exp(-(u**2) / (2 * 6.0**2) - v**2 / (2 * 3.0**2))
    m = rf_metrics(elongated)
    assert m["axis_major"] == pytest.approx(6.0, rel=1e-3)
    assert m["axis_minor"] == pytest.approx(3.0, rel=1e-3)
    assert m["anisotropy"] == pytest.approx(2.0, rel=1e-3)
    assert m["orientation_deg"] == pytest.approx(30.0, abs=0.1)
    assert abs(m["centroid_dx"]) < 1e-9 and abs(m["centroid_dy"]) < 1e-9
    round_map = torch.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * 4.0**2))
    r = rf_metrics(round_map)
    # a 2-D Gaussian holds mass q within sigma * sqrt(-2 ln(1 - q))
    for q in (0.2, 0.5, 0.9):
        assert r[f"r{int(q * 100)}"] == pytest.approx(
            4.0 * math.sqrt(-2 * math.log(1 - q)), abs=0.6
        )
    # above e^-2 of the maximum: the disc of radius 2 sigma
    assert r["area_e2"] == pytest.approx(math.pi * 8.0**2, rel=0.05)
    shifted = torch.roll(round_map, 5, dims=1)
    assert rf_metrics(shifted)["centroid_dx"] == pytest.approx(5.0, abs=1e-6)
    assert js_divergence(round_map, round_map) == pytest.approx(0.0, abs=1e-12)
    assert 0 < js_divergence(round_map, elongated) < 1


def test_bootstrap_interval_contains_the_value():
    torch.manual_seed(0)
    maps = torch.rand(16, 9, 9)
    out = bootstrap(maps, rf_metrics, samples=50)
    for value, lo, hi in out.values():
        assert lo <= hi and (lo <= value <= hi or math.isinf(value))


def test_table4_baselines_widen_the_theoretical_field():
    from das.variants import build_network

    def field(variant: str) -> int:
        net = build_network(variant, None, 1, "none", 10, 3, 32)
        assert net.cell is None and net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        return theoretical_rf(layer_specs(net.backbone))

    baseline, bigkernel, dilated = field("baseline"), field("bigkernel"), field("dilated")
    assert bigkernel > baseline and dilated > baseline
    # resnet_tiny, cifar stem: a 5x5 instead of 3x3 adds 2 x (its input's jump); the widened
    # convolutions sit at jumps 1, 1, 1, 2 and the dilated ones (5 effective) at 2, 4, 4, 8
    assert (baseline, bigkernel, dilated) == (49, 49 + 2 * 5, 49 + 2 * 18)


def test_rf_command_on_trained_checkpoints(tmp_path):
    import json

    from das_testing import TINY_DATA

    from das import rf, train

    genotype = tmp_path / "genotype.json"
    Genotype(("translate_x", "scale", "rotate"), nodes=2, frames=3).save(genotype)
    checkpoints = []
    for variant in ("baseline", "das"):
        out = tmp_path / variant
        argv = [*TINY_DATA, "--variant", variant, "--genotype", str(genotype), "--epochs", "1"]
        assert train.main([*argv, "--max-steps", "2", "--fusion", "tsm", "--out", str(out)]) == 0
        checkpoints.append(str(out / "checkpoint.pt"))
    out = tmp_path / "rf"
    argv = [*checkpoints, "--out", str(out), "--images", "6", "--bootstrap", "10", "--random"]
    assert rf.main([*argv, "--stage", "layer2"]) == 0
    result = json.loads((out / "rf.json").read_text())
    base, das = result["runs"]
    assert base["variant"] == "baseline" and das["variant"] == "das"
    assert das["frames_mixed"] == 3 and das["reshaped_area"] > das["square_area"]
    assert base["reshaped_area"] == base["square_area"] == base["theoretical_rf"] ** 2
    for key in ("r20", "r50", "r90", "area_e2", "anisotropy", "orientation_deg"):
        value = das["trained"][key]
        assert value["low"] <= value["high"]
    assert "js_vs_baseline" in das["trained"] and "js_vs_baseline" in das["random"]
    for picture in ("rf_grid.png", "rf_compare.png", "rf_profile.png"):
        assert (out / picture).stat().st_size > 0
    with pytest.raises(SystemExit) as exc:
        rf.main([str(tmp_path / "missing.pt"), "--out", str(out)])
    assert exc.value.code == 2


def test_unit_centre_is_the_centroid_of_a_linear_networks_field():
    """A linear stack of all-ones convolutions (stride 2, 'same' padding, a 3x3/2 pool-like
    conv) has a field symmetric about its unit's true centre: the ERF centroid sits at
    ``unit_centre``, half a pixel off the middle of the even-sized image."""
    layers = [nn.Conv2d(1, 1, 3, 1, 1), nn.Conv2d(1, 1, 3, 2, 1), nn.Conv2d(1, 1, 5, 2, 2)]
    for layer in layers:
        nn.init.ones_(layer.weight)
        nn.init.zeros_(layer.bias)
    net = nn.Sequential(*layers)
    images = torch.rand(1, 1, 32, 32) + 0.1  # the unit's ReLU stays open
    maps = effective_rf(lambda x: net(x), images)
    h = net(images).shape[-1]
    geometry = [(3, 1, 1), (3, 2, 1), (5, 2, 2)]
    centre = unit_centre(geometry, h // 2)
    assert centre == 16.0 and (32 - 1) / 2 == 15.5
    m = rf_metrics(maps[0], (centre, centre))
    assert abs(m["centroid_dx"]) < 1e-9 and abs(m["centroid_dy"]) < 1e-9
    assert rf_metrics(maps[0])["centroid_dx"] == pytest.approx(0.5)  # about the middle
    backbone = build_backbone("resnet_tiny", 10, 3)
    assert [(k, s) for k, s, _ in layer_geometry(backbone, 3)] == layer_specs(backbone, 3)


def test_search_and_train_reports_embed_receptive_fields(tmp_path):
    import json

    from das_testing import FAST_FUSION, TINY_DATA

    from das import search, train

    tiny = [*TINY_DATA, "--frames", "2", "--nodes", "2", "--epochs", "1", "--steps-per-epoch", "2"]
    out = tmp_path / "s"
    argv = [*tiny, "--fusion", FAST_FUSION, "--select", "argmax", "--rf", "--out", str(out)]
    assert search.main(argv) == 0
    result = json.loads((out / "rf" / "rf.json").read_text())
    names = [r["variant"] for r in result["runs"]]
    assert names == ["identity", "translate_x", "translate_y", "scale", "rotate", "genotype"]
    assert "js_vs_baseline" in result["runs"][1]["trained"]
    report = (out / "report.md").read_text()
    assert "Receptive fields of the searched backbone" in report and "rf/rf_grid.png" in report
    ab = tmp_path / "ab"
    argv = [*TINY_DATA, "--ablation", "--variants", "das,baseline", "--genotype", "random"]
    argv += ["--epochs", "1", "--max-steps", "2", "--fusion", FAST_FUSION, "--rf"]
    assert train.main([*argv, "--out", str(ab)]) == 0
    result = json.loads((ab / "rf" / "rf.json").read_text())
    assert [r["variant"] for r in result["runs"]] == ["baseline", "das"]
    assert result["runs"][1]["trained"]["js_vs_baseline"]["value"] > 0
    text = (ab / "ablation.md").read_text()
    assert "## Receptive fields" in text and "rf/rf_compare.png" in text
    with pytest.raises(SystemExit) as exc:
        train.main(["--task", "segmentation", "--data", str(tmp_path), "--rf"])
    assert exc.value.code == 2
