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

``--sweep`` measures memory against T: for every ``--frames`` value (default 4 8 16 32),
``--memory`` mode (default normal lean) and backend, a fresh process builds the searcher,
runs a warm-up step, then ``--steps`` timed steps, and reports the median seconds per step
and the peak memory of a step (CPU: the rise of the process's peak RSS during the timed
steps; CUDA: max_memory_allocated above what was allocated before them); the table adds
each mode's growth per added frame and the ratios the lean target is judged by (T=32 lean
fused peak against T=8 normal reference peak; lean time against normal at the same T).

``--profile`` (CPU) profiles one more step per backend with ``torch.profiler`` and reports
the share of its self CPU time spent in convolutions and in BatchNorm, which das_kernels
does not replace, and the Amdahl bound they set: the fused/reference ratio if everything
else in the reference step cost nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
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
    arch: str,
    batch_size: int,
    frames: int,
    image_size: int,
    device: str,
    amp: bool,
    order: int,
    memory: str = "normal",
) -> list[str]:
    """The ``python -m das.search`` arguments of the benchmarked configuration."""
    argv = ["--data", "digits", "--image-size", str(image_size), "--frames", str(frames)]
    argv += ["--arch", arch, "--fusion", "gsf", "--batch-size", str(batch_size)]
    argv += ["--order", str(order), "--device", device, "--no-progress", "--memory", memory]
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


def sweep_child(spec: dict[str, Any]) -> None:
    """In a fresh process: one (T, memory, backend) configuration's step time and peak."""
    with tempfile.TemporaryDirectory() as out:
        s = make_searcher(spec["argv"], spec["backend"], out)
        cuda = s.dev.type == "cuda"
        timed_step(s, spec["backend"], 0)
        if cuda:
            torch.cuda.reset_peak_memory_stats(s.dev)
            before = torch.cuda.memory_allocated(s.dev)
        else:
            Path("/proc/self/clear_refs").write_text("5")
            before = H.status_kb("VmRSS") * 1024
        times = [sum(timed_step(s, spec["backend"], i)[:2]) for i in range(1, 1 + spec["steps"])]
        if cuda:
            peak = torch.cuda.max_memory_allocated(s.dev) - before
        else:
            peak = H.status_kb("VmHWM") * 1024 - before
    print(f"{H.PEAK_MARKER} {peak} {statistics.median(times)}", flush=True)


def sweep(args: argparse.Namespace, config: dict[str, Any], device: str, steps: int) -> int:
    """``--sweep``: step time and peak memory per T, memory mode and backend."""
    rows = []
    for memory in args.memory:
        for frames in args.frames:
            for backend in args.backends:
                run = {**config, "frames": frames}
                run_argv = search_argv(**run, device=device, amp=args.amp, order=args.order,
                                       memory=memory)  # fmt: skip
                spec = {"argv": run_argv, "backend": backend, "steps": steps}
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                line = next(
                    (x for x in proc.stdout.splitlines()[::-1] if x.startswith(H.PEAK_MARKER)),
                    None,
                )
                if line is None:
                    sys.stderr.write(f"sweep child failed ({spec}):\n{proc.stderr[-2000:]}\n")
                    continue
                peak, seconds = int(line.split()[1]), float(line.split()[2])
                rows.append(
                    dict(
                        memory=memory,
                        frames=frames,
                        backend=backend,
                        s_per_step=seconds,
                        peak_bytes=peak,
                        peak=H.fmt_bytes(peak),
                    )
                )
                print(f"  {memory:<6} T={frames:<3} {backend:<9} {seconds:8.2f} s/step "
                      f"peak {H.fmt_bytes(peak)}", flush=True)  # fmt: skip
    by_key = {(r["memory"], r["frames"], r["backend"]): r for r in rows}
    for r in rows:
        normal = by_key.get(("normal", r["frames"], r["backend"]))
        if normal is not None and r["memory"] == "lean":
            r["time_vs_normal"] = r["s_per_step"] / normal["s_per_step"]
            r["mem_vs_normal"] = r["peak_bytes"] / normal["peak_bytes"]
    growth = {}
    for memory, backend in {(r["memory"], r["backend"]) for r in rows}:
        series = sorted((r["frames"], r["peak_bytes"]) for r in rows
                        if r["memory"] == memory and r["backend"] == backend)  # fmt: skip
        if len(series) > 1:
            (t0, p0), (t1, p1) = series[0], series[-1]
            growth[f"{memory}/{backend}"] = (p1 - p0) / (t1 - t0)
    print()
    H.print_table(rows, ["memory", "frames", "backend", "s_per_step", "time_vs_normal",
                         "peak", "mem_vs_normal"])  # fmt: skip
    for name, per_frame in sorted(growth.items()):
        print(f"growth per added frame, {name}: {H.fmt_bytes(per_frame)}")
    target = None
    lean32, ref8 = by_key.get(("lean", 32, "fused")), by_key.get(("normal", 8, "reference"))
    if lean32 and ref8:
        target = lean32["peak_bytes"] / ref8["peak_bytes"]
        print(f"T=32 lean fused peak / T=8 normal reference peak: {target:.2f} (target <= 1)")
    H.write_json(
        args.json or f"benchmarks/results/bench_search_step_sweep_{device}.json",
        {
            "benchmark": "das_search_step_memory_sweep",
            "device": device,
            "config": {**config, "order": args.order, "amp": args.amp, "fusion": "gsf"},
            "steps": steps,
            "environment": H.environment(),
            "rows": rows,
            "growth_bytes_per_frame": growth,
            "lean32_fused_vs_normal8_reference": target,
        },
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--arch", default=None, help=f"backbone (default {FULL['arch']})")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32")
    parser.add_argument(
        "--frames", type=int, nargs="+", default=None, help="T (default 8; --sweep 4 8 16 32)"
    )
    parser.add_argument(
        "--memory", nargs="+", choices=("normal", "lean"), default=None,
        help="--memory of the searcher (default normal; --sweep normal lean)",
    )  # fmt: skip
    parser.add_argument("--sweep", action="store_true", help="peak memory and time against T")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
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
    if args.child:
        sweep_child(json.loads(args.child))
        return 0

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
    if args.sweep:
        args.frames = args.frames or [4, 8, 16, 32]
        args.memory = args.memory or ["normal", "lean"]
        config.pop("frames")
        return sweep(args, config, device, args.steps or (5 if device == "cuda" else 2))
    if len(config["frames"] if isinstance(config["frames"], list) else [0]) > 1:
        parser.error("several --frames values need --sweep")
    if isinstance(config["frames"], list):
        config["frames"] = config["frames"][0]
    memory = (args.memory or ["normal"])[0]
    steps = args.steps or (20 if device == "cuda" else 3)
    warmup = args.warmup if args.warmup is not None else (3 if device == "cuda" else 1)
    warmup = max(warmup, 1)  # the first step (JIT builds, autotuning) is never timed
    run_argv = search_argv(**config, device=device, amp=args.amp, order=args.order, memory=memory)
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
