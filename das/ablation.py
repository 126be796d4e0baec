"""``python -m das.train --ablation``: the paper's ablation (Tables 5/6/10) as a set of
training runs: every ``--variants`` x ``--fusions`` (video variants) x ``--seeds``, each a
:func:`das.train.run_train` in ``OUT/<variant>[_<fusion>][/seed<S>]``, one after another in
this process or ``--jobs`` at once in spawned processes; then ``ablation.json`` and
``ablation.md`` (:func:`das.report.write_ablation_report`). ``--resume`` reads finished runs
and continues the others.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from das import session
from das.config import RunConfig, comma_list
from das.report import write_ablation_report
from das.runtime import DistEnv
from das.train import run_train
from das.variants import VIDEO_VARIANTS

__all__ = ["ablation_runs", "run_ablation"]


def ablation_runs(cfg: RunConfig) -> list[tuple[str, RunConfig]]:
    """(name, config) of every --ablation run: variant x fusion (video variants) x seed, in
    OUT/<variant>[_<fusion>] (one seed) or OUT/<variant>[_<fusion>]/seed<S> (several); with
    --policies one 2D baseline run per policy x seed in OUT/<policy name>[/seed<S>]."""
    t = cfg.train
    assert t is not None
    fusions = comma_list(t.fusions or cfg.model.fusion)
    seeds = [int(s) for s in comma_list(t.seeds)] if t.seeds else [cfg.seed]
    runs = []
    if t.policies is not None:  # one 2D baseline run per policy (das.policy)
        from das.policy import parse_policy_list

        for spec in parse_policy_list(t.policies):
            for seed in seeds:
                out = cfg.out / spec.name / (f"seed{seed}" if len(seeds) > 1 else "")
                sub = cfg.with_run(
                    variant="baseline",
                    policy=spec.text,
                    policies=None,
                    fusion="none",
                    seed=seed,
                    ablation=False,
                    out=str(out),
                )
                runs.append((spec.name, sub))
        return runs
    for variant in comma_list(t.variants):
        for fusion in fusions if variant in VIDEO_VARIANTS else ["none"]:
            tagged = variant in VIDEO_VARIANTS and len(fusions) > 1
            name = variant + (f"_{fusion}" if tagged else "")
            for seed in seeds:
                out = cfg.out / name / (f"seed{seed}" if len(seeds) > 1 else "")
                sub = cfg.with_run(
                    variant=variant, fusion=fusion, seed=seed, ablation=False, out=str(out)
                )
                runs.append((name, sub))
    return runs


def _finished(sub: RunConfig) -> dict[str, Any] | None:
    """The saved result of a finished run when resuming, else None (results written before
    they carried their seed or last training accuracy get them from the run and its log)."""
    done = sub.out / "result.json"
    if not (sub.runtime.resume and done.is_file()):
        return None
    result = {"seed": sub.seed, **json.loads(done.read_text())}
    log = done.with_name("train_log.json")
    if "train_acc" not in result and log.is_file():
        records = json.loads(log.read_text())
        result["train_acc"] = records[-1].get("train_acc") if records else None
    return result


def run_ablation(
    cfg: RunConfig, env: DistEnv | None = None, command: str | None = None
) -> list[dict[str, Any]]:
    """Every run of ``ablation_runs`` (``--jobs`` at once in separate processes, or one
    after another in this one, which may be a torchrun rank), then the tables (``command``:
    the command line, for ablation.md)."""
    assert cfg.train is not None
    runs = ablation_runs(cfg)
    if cfg.train.jobs > 1:
        results = _run_parallel(runs, cfg.train.jobs)
        write_ablation_report(results, cfg.out, cfg, command)
        _receptive_fields(cfg, runs)
        return results
    with session.process(cfg.runtime.device, None, env) as env:
        bundle = _load_bundle(cfg)
        results = []
        for name, sub in runs:
            result = _finished(sub)
            if result is None:
                if env.is_main:
                    print(f"== ablation: {name} seed {sub.seed}", file=sys.stderr, flush=True)
                result = run_train(sub, env, bundle)
            results.append(result)
        if env.is_main:
            write_ablation_report(results, cfg.out, cfg, command)
            _receptive_fields(cfg, runs)
        return results


def _receptive_fields(cfg: RunConfig, runs: list[tuple[str, RunConfig]]) -> None:
    """``--rf``: das.rf on the first seed's checkpoint of every run (against the baseline
    when it is among them), into OUT/rf/ and a section of ablation.md."""
    assert cfg.train is not None
    if not cfg.train.rf:
        return
    first: dict[str, RunConfig] = {}
    for name, sub in runs:
        first.setdefault(name, sub)
    ordered = sorted(first.values(), key=lambda sub: sub.train.variant != "baseline")
    from das.rf_report import write_train_fields

    checkpoints = [sub.out / "checkpoint.pt" for sub in ordered]
    write_train_fields(checkpoints, cfg.out / "rf", cfg.out / "ablation.md")


def _load_bundle(cfg: RunConfig) -> Any:
    if cfg.segmentation:
        from das.segtask import load_seg_bundle

        return load_seg_bundle(cfg)
    return session.load_bundle(cfg.data)


def _score(result: dict[str, Any]) -> str:
    if "val_miou" in result:
        return f"val mIoU {result['val_miou']:.4f}"
    return f"val acc {result['val_acc']:.4f}"


def _run_parallel(runs: list[tuple[str, RunConfig]], jobs: int) -> list[dict[str, Any]]:
    """run_train of each run in a pool of `jobs` spawned processes (CUDA-safe); results in
    the order of `runs`. A failed run stops the others and raises (--resume continues)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results: list[dict[str, Any] | None] = [_finished(sub) for _, sub in runs]
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending = {}
        for i, (_, sub) in enumerate(runs):
            if results[i] is None:
                sub = sub.with_run(no_progress=True, threads=sub.runtime.threads or threads)
                pending[pool.submit(run_train, sub)] = i
        print(
            f"== ablation: {len(pending)} runs, {jobs} at a time ({len(runs) - len(pending)} "
            "already finished)",
            file=sys.stderr,
            flush=True,
        )
        for future in as_completed(pending):
            i = pending[future]
            results[i] = future.result()
            name, sub = runs[i]
            print(
                f"== ablation: {name} seed {sub.seed} done: {_score(results[i])}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        pool.shutdown(cancel_futures=True)
    return results
