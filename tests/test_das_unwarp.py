"""Un-warping per-frame predictions (das.unwarp, the cells' ``unwarp``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from das_testing import saved_bytes

from das.cell import DASCell, DiscreteCell, Genotype, ReplicaCell
from das.unwarp import path_terms, unwarp_frames
from das_kernels.affine import invert

GENOTYPE = Genotype(
    (
        "translate_x",
        "identity",
        "translate_y",
        "scale",
        "rotate",
        "identity",
        "translate_x",
        "identity",
        "identity",
        "rotate",
    )
)


def test_integer_translations_unwarp_exactly_and_coverage_is_the_overlap():
    W, shift = 16, 2  # pixels per frame step
    cell = DiscreteCell(Genotype(("translate_x",), nodes=1, frames=5, magnitudes=(shift / W,)))
    x = torch.randn(2, 3, 8, W)
    out, coverage = cell.unwarp(cell(x))
    assert out.shape == x.shape and coverage.shape == (2, 1, 8, W)
    # frame t shows the image moved right by s_t * shift px, s_t in -2..2: column c is seen
    # by the frames whose shifted copy covers it
    cols = torch.arange(W)
    seen = torch.stack([(cols - s * shift >= 0) & (cols - s * shift < W) for s in range(-2, 3)])
    expected = seen.double().mean(0).expand(2, 1, 8, W)
    torch.testing.assert_close(coverage.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-6)  # exact up to fp32 rounding


def test_all_identity_genotype_unwarps_to_the_frame_mean():
    cell = DiscreteCell(Genotype(("identity",) * 10, frames=3))
    frames = torch.randn(2, 3, 5, 7, 13)
    out, coverage = cell.unwarp(frames)
    torch.testing.assert_close(out, frames.mean(1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(coverage, torch.ones(2, 1, 7, 13))


def test_matches_a_grid_sample_loop_over_paths_and_frames():
    cell = DiscreteCell(GENOTYPE, aspect=13 / 7)
    frames = torch.randn(2, 4, 3, 7, 13, dtype=torch.float64)
    out, coverage = cell.unwarp(frames)
    theta, weights = cell._paths
    inverse = invert(theta).double()
    num = torch.zeros(2, 3, 7, 13, dtype=torch.float64)
    den = torch.zeros(1, 1, 7, 13, dtype=torch.float64)
    for p in range(len(weights)):
        for t in range(frames.shape[1]):
            grid = F.affine_grid(inverse[p, t][None], [1, 1, 7, 13], align_corners=False)
            sample = F.grid_sample(frames[:, t], grid.expand(2, -1, -1, -1), align_corners=False)
            num += weights[p] * sample
            den += weights[p] * F.grid_sample(
                torch.ones(1, 1, 7, 13, dtype=torch.float64), grid, align_corners=False
            )
    torch.testing.assert_close(out, num / den, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        coverage[:1], den / (frames.shape[1] * weights.sum()), atol=1e-6, rtol=1e-6
    )


def test_mixed_cell_with_one_hot_edges_unwarps_like_its_discrete_cell():
    mixed = DASCell(frames=4, nodes=4)
    for e, op in enumerate(GENOTYPE.ops):
        mixed.fix_edge(e, mixed.ops.index(op))
    frames = torch.randn(2, 4, 5, 9, 9)
    out, coverage = mixed.unwarp(frames)
    expected, expected_coverage = DiscreteCell(GENOTYPE).unwarp(frames)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(coverage, expected_coverage, atol=1e-6, rtol=1e-6)


def test_merging_equal_paths_changes_nothing():
    cell = DASCell(frames=3, nodes=3)
    theta, weights = cell.op_thetas().detach(), cell.edge_weights().detach()
    merged = path_terms(cell.edges, cell.nodes, theta, weights, merge=True)
    every = path_terms(cell.edges, cell.nodes, theta, weights, merge=False)
    assert len(merged[1]) < len(every[1]) == 5 + (5 + 25) + (5 + 25 + 25 + 125)
    frames = torch.randn(1, 3, 2, 8, 8)
    for a, b in zip(unwarp_frames(frames, *merged), unwarp_frames(frames, *every)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    torch.manual_seed(0)
    frames = torch.randn(1, 2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    theta = torch.eye(2, 3, dtype=torch.float64).repeat(3, 2, 1, 1)
    theta = (theta + 0.2 * torch.randn_like(theta)).requires_grad_()
    weights = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f, t, w: unwarp_frames(f, t, w)[0], (frames, theta, weights), atol=1e-6
    )
    assert torch.autograd.gradcheck(lambda f: unwarp_frames(f, theta, weights, "probs")[0], frames)


def test_gradients_reach_tau_and_learnable_magnitudes():
    cell = DASCell(frames=3, nodes=2, learn_magnitudes=True)
    out, coverage = cell.unwarp(torch.randn(2, 3, 4, 8, 8))
    (out.square().sum() + coverage.sum()).backward()
    assert cell.tau.grad is not None and bool(cell.tau.grad.abs().sum() > 0)
    assert cell.magnitudes.grad is not None and bool(cell.magnitudes.grad.abs().sum() > 0)


def test_probabilities_average_to_a_distribution():
    cell = DiscreteCell(GENOTYPE)
    out, coverage = cell.unwarp(torch.randn(2, 4, 5, 9, 9), average="probs")
    assert bool((coverage > 0).all())
    torch.testing.assert_close(out.sum(1), torch.ones(2, 9, 9), atol=1e-5, rtol=0)


def test_replica_cell_is_the_plain_mean():
    frames = torch.randn(2, 3, 4, 5, 6)
    out, coverage = ReplicaCell(3).unwarp(frames)
    torch.testing.assert_close(out, frames.mean(1))
    assert bool((coverage == 1).all())


def test_saves_no_per_path_intermediates():
    cell = DiscreteCell(GENOTYPE)
    frames = torch.randn(2, 4, 11, 24, 24, requires_grad=True)
    fused = saved_bytes(lambda: cell.unwarp(frames))
    theta, weights = cell._paths
    inverse = invert(theta)

    def loop() -> None:
        for p in range(len(weights)):
            for t in range(4):
                grid = F.affine_grid(inverse[p, t][None].expand(2, 2, 3), [2, 11, 24, 24], False)
                F.grid_sample(frames[:, t], grid, align_corners=False)

    assert len(weights) > 4
    frames_bytes = frames.numel() * frames.element_size()
    assert fused <= 1.5 * frames_bytes  # the frames themselves (+ small maps), nothing per path
    assert saved_bytes(loop) > 2 * fused


def test_bad_arguments():
    cell = DiscreteCell(GENOTYPE)
    with pytest.raises(ValueError, match="average"):
        cell.unwarp(torch.randn(1, 4, 2, 5, 5), average="median")
    with pytest.raises(ValueError, match=r"T = 3 but the paths.* have 4"):
        cell.unwarp(torch.randn(1, 3, 2, 5, 5))
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        cell.unwarp(torch.randn(4, 2, 5, 5))
