"""Benchmark one DAS search step with the fused das_kernels ops against the reference ops.

    python benchmarks/bench_search_step.py                  # B32 T8 32x32 resnet18 + GSF
    python benchmarks/bench_search_step.py --device cuda --amp
    python benchmarks/bench_search_step.py --quick          # tiny config (resnet_tiny, 16x16)

One step is ``das.search.Searcher.step``, the step the search loop runs (first order by
default): the arch step (Adam on tau) then ``das.engine.weight_step`` (SGD on the
backbone), on batches from the searcher's own weight and arch streams (bundled digits
resized to ``--image-size``; batch creation is not timed, as in the search). The searcher is
built from the real CLI's configuration (``das.cli.parse_config("search", ...)``) and run
under
``das.runtime.ops_backend("fused" | "reference")``, a searcher per backend with the same
seed; after ``--warmup`` steps each, the ``--steps`` timed steps alternate between the
backends (timed one backend after the other, the CPU ratio read 0.93x with fused first and
1.23x with reference first: the second one ran faster). Reported per backend: median seconds
per step (and its arch / weight parts; CUDA synchronised), speedup of fused over reference,
the losses of the first step (arch / weight; fused and reference must agree to rounding) and
on CUDA the peak memory a step allocates above what was allocated before it (activations,
gradients, workspaces; parameters and optimiser states are the same for both). A table, and
JSON (``--json``).

``--profile`` (CPU) profiles one more step per backend with ``torch.profiler`` and reports
the share of its self CPU time spent in convolutions and in BatchNorm, which das_kernels
does not replace, and the Amdahl bound they set: the fused/reference ratio if everything
else in the reference step cost nothing.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

from das import cli, search  # noqa: E402
from das.runtime import DistEnv, backend_name, ops_backend, resolve_device  # noqa: E402

BACKENDS = ("fused", "reference")
FULL = dict(arch="resnet18", batch_size=32, frames=8, image_size=32)
QUICK = dict(arch="resnet_tiny", batch_size=8, frames=4, image_size=16)


def search_argv(
    arch: str, batch_size: int, frames: int, image_size: int, device: str, amp: bool, order: int
) -> list[str]:
    """The ``python -m das.search`` arguments of the benchmarked configuration."""
    argv = ["--data", "digits", "--image-size", str(image_size), "--frames", str(frames)]
    argv += ["--arch", arch, "--fusion", "gsf", "--batch-size", str(batch_size)]
    argv += ["--order", str(order), "--device", device, "--no-progress"]
    return argv + (["--amp"] if amp else [])


def make_searcher(argv: list[str], backend: str, out: str) -> search.Searcher:
    """A Searcher as ``python -m das.search ARGV --ops-backend BACKEND`` builds it."""
    cfg = cli.parse_config("search", [*argv, "--ops-backend", backend, "--out", out])
    env = DistEnv(device=resolve_device(cfg.runtime.device))
    with ops_backend(backend):
        return search.Searcher(cfg, env)


def search_step(s: search.Searcher, step: int) -> tuple[float, float, float, float]:
    """``Searcher.step``, as the search loop runs it: (arch s, weight s, arch loss, w loss)."""
    st = s.step(step)
    return st.sec_arch, st.sec_weight, st.arch_loss, st.weight_loss


def op_shares(s: search.Searcher, backend: str, step: int) -> dict[str, float]:
    """Shares of one profiled step's self CPU time in convolutions and in BatchNorm (forward
    and backward aten ops whose names contain ``conv`` / ``batch_norm``)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        timed_step(s, backend, step)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)

    def share(part: str) -> float:
        return sum(e.self_cpu_time_total for e in events if part in e.key.lower()) / total

    return {"conv_share": share("conv"), "batch_norm_share": share("batch_norm")}


def timed_step(s: search.Searcher, backend: str, step: int) -> tuple[float, ...]:
    """``search_step`` under ``backend``'s ops, plus on CUDA the peak memory the step
    allocated above what was allocated before it (activations, gradients, workspaces)."""
    cuda = s.dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(s.dev)
        before = torch.cuda.memory_allocated(s.dev)
    with ops_backend(backend):
        result = search_step(s, step)
    peak = torch.cuda.max_memory_allocated(s.dev) - before if cuda else 0
    return (*result, peak)


def measure(
    argv: list[str], backends: list[str], steps: int, warmup: int, profile: bool = False
) -> list[dict[str, Any]]:
    """One searcher per backend (same seed); ``warmup`` untimed steps each, then ``steps``
    timed steps alternating between the backends, so that neither pays the process's
    warm-up (allocator growth, oneDNN primitive caches) nor drifts in machine speed alone."""
    with tempfile.TemporaryDirectory() as out:
        searchers = {b: make_searcher(argv, b, f"{out}/{b}") for b in backends}
        first = {b: timed_step(s, b, 0) for b, s in searchers.items()}
        for i in range(1, warmup):
            for b, s in searchers.items():
                timed_step(s, b, i)
        timed: dict[str, list[tuple[float, ...]]] = {b: [] for b in backends}
        for i in range(warmup, warmup + steps):
            for b, s in searchers.items():
                timed[b].append(timed_step(s, b, i))
        shares = {
            b: op_shares(s, b, warmup + steps) if profile else {} for b, s in searchers.items()
        }
        cuda = next(iter(searchers.values())).dev.type == "cuda"
        names = {b: backend_name(s.dev, b) for b, s in searchers.items()}
        del searchers
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    rows = []
    for b in backends:
        arch = [t[0] for t in timed[b]]
        weight = [t[1] for t in timed[b]]
        peak = max(t[4] for t in timed[b]) if cuda else None
        rows.append(
            dict(
                backend=b,
                das_kernels=names[b],
                s_per_step=statistics.median(a + w for a, w in zip(arch, weight)),
                s_arch=statistics.median(arch),
                s_weight=statistics.median(weight),
                first_arch_loss=first[b][2],
                first_weight_loss=first[b][3],
                first_losses=f"{first[b][2]:.6f} / {first[b][3]:.6f}",
                peak_bytes=peak,
                peak=H.fmt_bytes(peak) if cuda else "n/a",
                steps=steps,
                **shares[b],
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--arch", default=None, help=f"backbone (default {FULL['arch']})")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32")
    parser.add_argument("--frames", type=int, default=None, help="T (default 8)")
    parser.add_argument("--image-size", type=int, default=None, help="default 32")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1, help="DARTS order")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (CPU 3, CUDA 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (CPU 1, CUDA 3)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--quick", action="store_true", help="tiny config: resnet_tiny, B8, T4, 16x16"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="CPU: profile one more step per backend; convolution and BatchNorm shares and "
        "the speedup bound they set",
    )
    parser.add_argument(
        "--json",
        default=None,
        help="output path (default benchmarks/results/bench_search_step_<device>.json)",
    )
    args = parser.parse_args(argv)

    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.amp and device != "cuda":
        parser.error("--amp needs CUDA")
    if args.profile and device != "cpu":
        parser.error("--profile measures CPU time; run it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = QUICK if args.quick else FULL
    config = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    steps = args.steps or (20 if device == "cuda" else 3)
    warmup = args.warmup if args.warmup is not None else (3 if device == "cuda" else 1)
    warmup = max(warmup, 1)  # the first step (JIT builds, autotuning) is never timed
    run_argv = search_argv(**config, device=device, amp=args.amp, order=args.order)
    print(
        f"device {device}; search step of {config} order {args.order}"
        f"{' amp' if args.amp else ''}; {warmup} warm-up + {steps} timed steps; "
        f"{H.environment()}",
        flush=True,
    )
    rows = measure(run_argv, args.backends, steps, warmup, args.profile)
    by_name = {r["backend"]: r for r in rows}
    bound = None
    if "reference" in by_name:
        ref = by_name["reference"]
        for r in rows:
            r["x_vs_reference"] = ref["s_per_step"] / r["s_per_step"]
            if r["peak_bytes"] and ref["peak_bytes"]:
                r["mem_vs_reference"] = r["peak_bytes"] / ref["peak_bytes"]
        if args.profile:
            bound = 1 / (ref["conv_share"] + ref["batch_norm_share"])
    columns = ["backend", "das_kernels", "s_per_step", "s_arch", "s_weight", "x_vs_reference"]
    columns += ["peak", "mem_vs_reference", "first_losses"]
    columns += ["conv_share", "batch_norm_share"] if args.profile else []
    H.print_table(rows, columns)
    if bound is not None:
        print(
            f"convolutions + BatchNorm are {1 / bound:.1%} of the reference step: replacing "
            f"everything else with free ops would make the step at most {bound:.2f}x faster"
        )
    out = args.json or f"benchmarks/results/bench_search_step_{device}.json"
    H.write_json(
        out,
        {
            "benchmark": "das_search_step",
            "device": device,
            "config": {**config, "order": args.order, "amp": args.amp, "fusion": "gsf"},
            "search_argv": run_argv,
            "warmup": warmup,
            "environment": H.environment(),
            "rows": rows,
            "speedup_bound": bound,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
