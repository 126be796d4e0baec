"""Consensus of several searches: ``python -m das.search --seeds 0,1,2``.

:func:`consensus` is the reusable part: per edge the op most genotypes chose (ties: the
larger softmax weight summed over the searches, then search-space order). :func:`run_seeds`
runs one complete search per seed in ``OUT/seed-S`` (sequentially, in this process; each
resumable with ``--resume``) and writes ``OUT/genotype.json`` (the consensus),
``OUT/consensus.json`` (per edge: the consensus op, the fraction of seeds that picked it,
each seed's op) and ``OUT/report.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from das.cell import Genotype
from das.config import RunConfig, comma_list
from das.report import markdown_table
from das.runtime import atomic_write_text

__all__ = ["consensus", "run_seeds", "write_consensus"]

Weights = Sequence[dict[str, float]]  # one search: per edge, op -> softmax weight


def consensus(
    genotypes: Sequence[Genotype], weights: Sequence[Weights] | None = None
) -> tuple[Genotype, list[dict[str, Any]]]:
    """The consensus genotype of `genotypes` (same cell) and per edge ``{"edge", "op",
    "agreement", "votes", "ops"}`` (agreement: the fraction of genotypes that chose the
    consensus op; ops: each genotype's op). `weights[i][e][op]`: genotype i's softmax weight
    of `op` on edge e, summed over genotypes to break ties of votes."""
    if not genotypes:
        raise ValueError("consensus of no genotypes")
    first = genotypes[0]
    if any(len(g.ops) != len(first.ops) or g.nodes != first.nodes for g in genotypes):
        raise ValueError("consensus needs genotypes of the same cell")
    space = list(first.search_space) or sorted({op for g in genotypes for op in g.ops})
    ops, mags, edges = [], [], []
    for e in range(len(first.ops)):
        picks = [g.ops[e] for g in genotypes]
        votes = {op: picks.count(op) for op in dict.fromkeys(picks)}
        mass = {op: sum(w[e].get(op, 0.0) for w in weights) if weights else 0.0 for op in votes}
        best = max(
            votes,
            key=lambda op: (votes[op], mass[op], -space.index(op) if op in space else 0),
        )
        chosen = [g.magnitudes[e] for g in genotypes if g.ops[e] == best]
        ops.append(best)
        mags.append(sum(chosen) / len(chosen))
        edges.append(
            {
                "edge": e,
                "op": best,
                "agreement": votes[best] / len(genotypes),
                "votes": votes,
                "ops": picks,
            }
        )
    genotype = Genotype(
        tuple(ops), first.nodes, first.frames, tuple(mags), first.mode, first.search_space
    )
    return genotype, edges


def _final_weights(log: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per edge, op -> softmax weight after the search (the log's last row)."""
    w = log[-1]["weights"]
    return [dict(zip(w["ops"], row)) for row in w["values"]]


def write_consensus(out: Path, seeds: list[int], results: list[dict[str, Any]]) -> Genotype:
    """OUT/genotype.json, OUT/consensus.json and OUT/report.md from the seeds' results."""
    genotypes = [r["genotype"] for r in results]
    weights = [_final_weights(r["log"]) for r in results]
    genotype, edges = consensus(genotypes, weights)
    noise = [{rec["edge"]: rec.get("within_noise") for rec in r["records"]} for r in results]
    for row in edges:
        row["within_noise"] = [n.get(row["edge"]) for n in noise]
    out.mkdir(parents=True, exist_ok=True)
    genotype.save(out / "genotype.json")
    summary = {
        "seeds": seeds,
        "runs": [f"seed-{s}" for s in seeds],
        "genotype": genotype.to_dict(),
        "mean_agreement": sum(r["agreement"] for r in edges) / len(edges),
        "edges": edges,
    }
    atomic_write_text(json.dumps(summary, indent=1) + "\n", out / "consensus.json")

    def mark(op: str, within: bool | None) -> str:
        return f"{op}*" if within else op

    lines = [
        f"# DAS consensus of {len(seeds)} searches (seeds {', '.join(map(str, seeds))})",
        "",
        "Each seed's complete search is in `seed-S/` (its own report.md). Per edge the op most "
        "seeds kept (ties: the larger summed softmax weight); agreement = the fraction of seeds "
        "that kept it. `*`: that seed's perturbation decision was within noise (margin over "
        "the runner-up below 2 standard errors).",
        "",
        f"- mean agreement: {summary['mean_agreement']:.3f}",
        f"- consensus genotype: {list(genotype.ops)}",
        "",
        markdown_table(
            ["edge", "from->to", "consensus", "agreement", *[f"seed {s}" for s in seeds]],
            [
                [
                    row["edge"],
                    "{}->{}".format(*genotype.edges[row["edge"]]),
                    row["op"],
                    row["agreement"],
                    *[mark(op, w) for op, w in zip(row["ops"], row["within_noise"])],
                ]
                for row in edges
            ],
        ),
        "",
    ]
    atomic_write_text("\n".join(lines), out / "report.md")
    return genotype


def run_seeds(cfg: RunConfig) -> dict[str, Any]:
    """``--seeds``: the search of `cfg` once per seed (``OUT/seed-S``), then the consensus."""
    from das import cli
    from das.search import run_search

    assert cfg.search is not None and cfg.search.seeds is not None
    seeds = [int(s) for s in comma_list(cfg.search.seeds)]
    results = []
    for seed in seeds:
        one = cfg.with_run(seed=seed, seeds=None, out=str(cfg.out / f"seed-{seed}"))
        results.append(run_search(one))
    genotype = write_consensus(cfg.out, seeds, results) if cli.is_main_process() else None
    return {"genotype": genotype, "seeds": seeds, "results": results}
