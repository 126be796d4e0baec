"""Benchmark the fused un-warp of segmentation frames against a grid_sample loop.

    python benchmarks/bench_unwarp.py            # B=8, T=8, 11 classes, 180x240 (CamVid size)
    python benchmarks/bench_unwarp.py --quick    # a small shape

The un-warp maps per-frame logits (B, T, classes, H, W) back onto the image with the inverse
of every path of the cell (das.unwarp). Cells: `genotype` (a 4-node discrete genotype) and
`mixed` (the 4-node affine5 search cell, every path of every op; at the shape divided by 8, the
logit resolution of an output-stride-8 network). Providers: `loop` (one affine_grid +
grid_sample per path and frame, with the coverage the same way) and `fused` (das.unwarp: one
das_kernels.multi_affine_warp call for the logits and one for the coverage). Modes: forward,
fwd+bwd (gradient for the logits). Prints a table and writes JSON: median ms, speedup over
the loop in the same run, peak memory (CPU: fresh process per provider; GPU:
max_memory_allocated), achieved GB/s (bytes of logits read and written) against the
measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

from das.cell import DASCell, DiscreteCell, Genotype  # noqa: E402
from das.unwarp import path_terms, unwarp_frames  # noqa: E402
from das_kernels.affine import invert  # noqa: E402

GENOTYPE_OPS = (
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


@dataclasses.dataclass(frozen=True)
class Case:
    cell: str
    B: int = 8
    T: int = 8
    C: int = 11
    H: int = 180
    W: int = 240

    def __str__(self) -> str:
        return f"{self.cell} B{self.B} T{self.T} C{self.C} {self.H}x{self.W}"


SHAPES = {
    "genotype": Case("genotype"),
    "mixed": Case("mixed", H=23, W=30),
    "small": Case("genotype", B=2, T=4, C=5, H=36, W=48),
}
PROVIDERS = ("loop", "fused")
MODES = ("forward", "fwd+bwd")


def paths(case: Case, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, T, 2, 3) path matrices and (P,) weights of the case's cell."""
    aspect = case.W / case.H
    if case.cell == "genotype":
        cell = DiscreteCell(Genotype(GENOTYPE_OPS, frames=case.T), aspect=aspect)
        theta, weights = cell.theta, cell.one.expand(len(GENOTYPE_OPS), 1)
        edges, nodes = cell.genotype.edges, cell.nodes
    else:
        torch.manual_seed(0)
        cell = DASCell(frames=case.T, nodes=4, aspect=aspect, tau_init_std=1.0)
        theta, weights, edges, nodes = cell.op_thetas(), cell.edge_weights(), cell.edges, 4
    with torch.no_grad():
        theta, weights = path_terms(edges, nodes, theta, weights)
    return theta.to(device), weights.to(device)


def loop_unwarp(frames: torch.Tensor, theta: torch.Tensor, weights: torch.Tensor):
    """What users write without the fused op: one grid_sample per path and frame."""
    B, T, C, H, W = frames.shape
    inverse = invert(theta)
    num = frames.new_zeros(B, C, H, W)
    den = frames.new_zeros(1, 1, H, W)
    ones = frames.new_ones(1, 1, H, W)
    for p in range(len(weights)):
        for t in range(T):
            grid = F.affine_grid(inverse[p, t][None], [1, 1, H, W], align_corners=False)
            num = num + weights[p] * F.grid_sample(
                frames[:, t], grid.expand(B, -1, -1, -1), align_corners=False
            )
            den = den + weights[p] * F.grid_sample(ones, grid, align_corners=False)
    return num / den.clamp_min(1e-12), den / (T * weights.sum())


def workload(provider: str, case: Case, mode: str, device: str) -> Callable[[], None]:
    theta, weights = paths(case, device)
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(case.B, case.T, case.C, case.H, case.W, generator=g).to(device)
    fn = loop_unwarp if provider == "loop" else unwarp_frames
    if mode == "forward":

        def run():
            with torch.no_grad():
                fn(frames, theta, weights)

        return run
    frames.requires_grad_()
    grad_out = torch.randn(case.B, case.C, case.H, case.W, generator=g).to(device)

    def run_both():
        fn(frames, theta, weights)[0].backward(grad_out)

    return run_both


def bytes_moved(case: Case, mode: str) -> int:
    frames = 4 * case.B * case.T * case.C * case.H * case.W
    out = 4 * case.B * case.C * case.H * case.W
    fwd = frames + out
    return {"forward": fwd, "fwd+bwd": fwd + out + frames}[mode]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=None)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--quick", action="store_true", help="the small shape only")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    parser.add_argument(
        "--json", default=None, help="default benchmarks/results/bench_unwarp_<device>.json"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        H.report_cpu_peak(workload(spec["provider"], Case(**spec["case"]), spec["mode"], "cpu"))
        return 0
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    shapes = args.shapes or (["small"] if args.quick else ["genotype", "mixed"])
    bandwidth = H.copy_bandwidth_gbs(device)
    print(f"device {device}; measured copy bandwidth {bandwidth:.1f} GB/s; {H.environment()}")
    rows = []
    for shape in shapes:
        case = SHAPES[shape]
        n_paths = len(paths(case, "cpu")[1])
        for mode in args.modes:
            block = []
            for provider in PROVIDERS:
                ms = H.median_ms(workload(provider, case, mode, device), device, reps=7)
                peak = None
                if not args.no_memory:
                    if device == "cuda":
                        peak = H.gpu_peak_bytes(workload(provider, case, mode, device), device)
                    else:
                        child = {"provider": provider, "case": dataclasses.asdict(case)}
                        child["mode"] = mode
                        peak = H.cpu_peak_bytes([__file__, "--child", json.dumps(child)])
                gbs = bytes_moved(case, mode) / (ms * 1e-3) / 1e9
                block.append(
                    dict(
                        shape=str(case),
                        paths=n_paths,
                        mode=mode,
                        provider=provider,
                        median_ms=ms,
                        peak_bytes=peak,
                        peak=H.fmt_bytes(peak),
                        gbs=gbs,
                        pct_copy_bw=100 * gbs / bandwidth,
                    )
                )
            loop = block[0]
            for r in block:
                r["x_vs_loop"] = loop["median_ms"] / r["median_ms"]
                if r["peak_bytes"] and loop["peak_bytes"]:
                    r["mem_vs_loop"] = r["peak_bytes"] / loop["peak_bytes"]
            rows += block
            H.print_table(
                block,
                ["shape", "paths", "mode", "provider", "median_ms", "x_vs_loop", "peak",
                 "mem_vs_loop", "gbs", "pct_copy_bw"],
            )  # fmt: skip
            print()
    H.write_json(
        args.json or f"benchmarks/results/bench_unwarp_{device}.json",
        {
            "benchmark": "unwarp",
            "device": device,
            "copy_bandwidth_gbs": bandwidth,
            "environment": H.environment(),
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
