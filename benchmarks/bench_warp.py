"""Benchmark the fused multi-affine warp against what users write without it.

    python benchmarks/bench_warp.py                 # CPU (and GPU providers when CUDA is present)
    python benchmarks/bench_warp.py --quick         # small shape only
    python benchmarks/bench_warp.py --device cuda --shapes gpu

Providers: reference-loop (one grid_sample per op and frame), reference-batched (one
grid_sample over all K*T), kornia (batched warp_affine), ours-cpp, and on GPU ours-triton,
ours-cuda. Modes: forward, backward, fwd+bwd (grads for x, theta and weights). Prints a
table and writes JSON: median ms, speedup over each reference in the same run, peak memory
(CPU: fresh process per provider; GPU: max_memory_allocated) and achieved GB/s against the
measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import das_kernels  # noqa: E402
from das_kernels import affine, backends, reference  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
    B: int
    C: int
    H: int
    W: int
    K: int = 5
    T: int = 8
    video: bool = False

    def __str__(self) -> str:
        kind = "video" if self.video else "image"
        return f"{kind} B{self.B} C{self.C} {self.H}x{self.W} K{self.K} T{self.T}"


SHAPES = {
    "small": Case(64, 3, 32, 32),
    "large": Case(16, 3, 224, 224),
    "video": Case(16, 3, 32, 32, video=True),
    "gpu": Case(32, 3, 224, 224),
}
PROVIDERS = (
    "reference-loop",
    "reference-batched",
    "kornia",
    "ours-cpp",
    "ours-triton",
    "ours-cuda",
)
MODES = ("forward", "backward", "fwd+bwd")
OURS_BACKEND = {"ours-cpp": "cpp", "ours-triton": "triton", "ours-cuda": "cuda"}


def inputs(case: Case, device: str, grad: bool, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    shape = (
        (case.B, case.T, case.C, case.H, case.W) if case.video else (case.B, case.C, case.H, case.W)
    )
    x = torch.rand(shape, generator=g).to(device, dtype)
    ops = list(affine.OPS_AFFINE5)[: case.K] + ["identity"] * max(0, case.K - 5)
    theta = affine.build_theta(ops, case.T, aspect=case.W / case.H).to(device)
    weights = torch.softmax(torch.randn(case.K, generator=g), 0).to(device)
    return [t.requires_grad_(grad) for t in (x, theta, weights)]


def reference_loop(x, theta, weights):
    """One affine_grid + grid_sample per (op, frame): the straightforward PyTorch code."""
    K, T = theta.shape[:2]
    B, C, H, W = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
    frames = []
    for t in range(T):
        src = x[:, t] if x.dim() == 5 else x
        acc = 0
        for k in range(K):
            grid = F.affine_grid(theta[k, t].expand(B, 2, 3), [B, C, H, W], align_corners=False)
            acc = acc + weights[k] * F.grid_sample(src, grid, align_corners=False)
        frames.append(acc)
    return torch.stack(frames, 1)


def reference_batched(x, theta, weights):
    B = x.shape[0]
    K, T = theta.shape[:2]
    x5 = x if x.dim() == 5 else x.unsqueeze(1)
    return reference.multi_affine_warp(
        x5, theta.expand(B, K, T, 2, 3), weights.expand(B, K), x.shape[-2], x.shape[-1]
    )


def kornia_warp(x, theta, weights):
    import kornia

    B = x.shape[0]
    K, T = theta.shape[:2]
    C, H, W = x.shape[-3:]
    x5 = x if x.dim() == 5 else x.unsqueeze(1).expand(B, T, C, H, W)
    src = x5.unsqueeze(1).expand(B, K, T, C, H, W).reshape(B * K * T, C, H, W)
    M = affine.to_kornia_matrix(theta, H, W).expand(B, K, T, 2, 3).reshape(-1, 2, 3)
    warped = kornia.geometry.transform.warp_affine(
        src, M, dsize=(H, W), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return torch.einsum("k,bktchw->btchw", weights, warped.view(B, K, T, C, H, W))


def provider_fn(provider: str) -> Callable:
    if provider in OURS_BACKEND:
        backend = OURS_BACKEND[provider]

        def ours(x, theta, weights):
            with backends.use(backend):
                return das_kernels.multi_affine_warp(x, theta, weights)

        return ours
    return {
        "reference-loop": reference_loop,
        "reference-batched": reference_batched,
        "kornia": kornia_warp,
    }[provider]


def unavailable(provider: str, device: str) -> str | None:
    if provider in OURS_BACKEND:
        return backends.unavailable_reason(OURS_BACKEND[provider], device, "multi_affine_warp")
    if provider == "kornia":
        try:
            import kornia  # noqa: F401
        except ImportError:
            return "kornia is not installed"
    return None


def workload(provider: str, case: Case, mode: str, device: str) -> Callable[[], None]:
    """A no-argument callable running `mode` of `provider` on fresh inputs made once."""
    fn = provider_fn(provider)
    backend = OURS_BACKEND.get(provider)
    x, theta, weights = inputs(case, device, grad=mode != "forward")

    def ctx():  # the backward resolves its backend when it runs: force it there too
        return backends.use(backend) if backend else contextlib.nullcontext()

    if mode == "forward":

        def run():
            with torch.no_grad():
                fn(x, theta, weights)

        return run
    grad_out = torch.randn(case.B, case.T, case.C, case.H, case.W, device=device)
    if mode == "fwd+bwd":

        def run_both():
            with ctx():
                fn(x, theta, weights).backward(grad_out)

        return run_both
    out = fn(x, theta, weights)

    def run_backward():
        with ctx():
            out.backward(grad_out, retain_graph=True)

    return run_backward


def bytes_moved(case: Case, mode: str) -> int:
    """Minimum bytes a fused kernel must move (fp32): read x, write frames; and back."""
    x_bytes = 4 * case.B * (case.T if case.video else 1) * case.C * case.H * case.W
    out_bytes = 4 * case.B * case.T * case.C * case.H * case.W
    fwd, bwd = x_bytes + out_bytes, out_bytes + 2 * x_bytes
    return {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}[mode]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=list(SHAPES),
        help="default: small large video (+gpu on CUDA)",
    )
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--quick", action="store_true", help="the small shape only")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    parser.add_argument(
        "--json",
        default=None,
        help="output path (default benchmarks/results/bench_warp_<device>.json)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # fresh process measuring one provider's CPU peak memory
        spec = json.loads(args.child)
        H.report_cpu_peak(workload(spec["provider"], Case(**spec["case"]), spec["mode"], "cpu"))
        return 0

    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    shapes = args.shapes or (
        ["small"]
        if args.quick
        else ["small", "large", "video"] + (["gpu"] if device == "cuda" else [])
    )
    bandwidth = H.copy_bandwidth_gbs(device)
    print(f"device {device}; measured copy bandwidth {bandwidth:.1f} GB/s; {H.environment()}")
    rows = []
    for shape in shapes:
        case = SHAPES[shape]
        for mode in args.modes:
            block = []
            for provider in args.providers:
                reason = unavailable(provider, device)
                if reason:
                    print(f"  skip {provider} ({case}, {mode}): {reason}")
                    continue
                ms = H.median_ms(workload(provider, case, mode, device), device)
                peak = None
                if not args.no_memory:
                    if device == "cuda":
                        peak = H.gpu_peak_bytes(workload(provider, case, mode, device), device)
                    else:
                        child = json.dumps(
                            {"provider": provider, "case": dataclasses.asdict(case), "mode": mode}
                        )
                        peak = H.cpu_peak_bytes([__file__, "--child", child])
                gbs = bytes_moved(case, mode) / (ms * 1e-3) / 1e9
                block.append(
                    dict(
                        shape=str(case),
                        mode=mode,
                        provider=provider,
                        median_ms=ms,
                        peak_bytes=peak,
                        peak=H.fmt_bytes(peak),
                        gbs=gbs,
                        pct_copy_bw=100 * gbs / bandwidth,
                    )
                )
            by_name = {r["provider"]: r for r in block}
            for r in block:
                for ref in ("reference-loop", "reference-batched"):
                    if ref in by_name:
                        r[f"x_vs_{ref.split('-')[1]}"] = by_name[ref]["median_ms"] / r["median_ms"]
                        if r["peak_bytes"] and by_name[ref]["peak_bytes"]:
                            r[f"mem_vs_{ref.split('-')[1]}"] = (
                                r["peak_bytes"] / by_name[ref]["peak_bytes"]
                            )
            rows += block
            H.print_table(
                block,
                [
                    "shape",
                    "mode",
                    "provider",
                    "median_ms",
                    "x_vs_loop",
                    "x_vs_batched",
                    "peak",
                    "mem_vs_batched",
                    "gbs",
                    "pct_copy_bw",
                ],
            )
            print()
    out = args.json or f"benchmarks/results/bench_warp_{device}.json"
    H.write_json(
        out,
        {
            "benchmark": "multi_affine_warp",
            "device": device,
            "copy_bandwidth_gbs": bandwidth,
            "environment": H.environment(),
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
