"""Selection with stated confidence (paired per-image SEs, within-noise flag, loss
tie-break), per-image evaluation under 2 gloo ranks, old records, and ``--seeds``
consensus (fast)."""

import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from das_testing import FAST_FUSION, TINY_DATA
from torch import nn

from das import search
from das.cell import DASCell, Genotype
from das.consensus import consensus
from das.engine import evaluate
from das.runtime import DistEnv
from das.select import EdgeRecord, choose, paired_se, select_ops

TINY = [*TINY_DATA, "--frames", "2", "--nodes", "2", "--epochs", "1", "--steps-per-epoch", "2"]


def test_paired_se_by_hand():
    a = torch.tensor([1.0, 1.0, 0.0, 1.0])
    b = torch.tensor([0.0, 1.0, 0.0, 0.0])  # d = 1, 0, 0, 1: mean 0.5, sd sqrt(1/3)
    mean, se = paired_se(a, b)
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(math.sqrt(1 / 3) / 2)
    assert paired_se(torch.ones(1), torch.zeros(1)) == (1.0, 0.0)


def _fake_evaluate(cell, masked_correct, masked_loss=None, n=10):
    """An evaluate() whose per-image results depend on which op of edge 0 is masked."""
    masked_loss = masked_loss or {}

    def run():
        off = [k for k in range(len(cell.ops)) if cell.mask[0, k] == 0]
        correct = masked_correct.get(off[0], torch.ones(n)) if off else torch.ones(n)
        losses = masked_loss.get(off[0], torch.full((n,), 0.1)) if off else torch.full((n,), 0.1)
        correct, losses = correct.double(), losses.double()
        return {
            "acc": float(correct.mean()),
            "loss": float(losses.mean()),
            "correct": correct,
            "losses": losses,
        }

    return run


def _wrong_on(indices, n):
    c = torch.ones(n)
    c[list(indices)] = 0
    return c


def test_within_noise_flag_and_ses():
    cell = DASCell(frames=2, nodes=1)  # one edge
    ev = _fake_evaluate(cell, {0: _wrong_on(range(4), 10), 1: _wrong_on(range(4, 7), 10)})
    _, (rec,) = select_ops(cell, ev, [0])
    op0, op1 = cell.ops[0], cell.ops[1]
    assert rec.chosen == op0 and rec.runner_up == op1 and rec.n_images == 10
    assert rec.drop[op0] == pytest.approx(0.4)
    assert rec.drop_se[op0] == pytest.approx(math.sqrt(2.4 / 9) / math.sqrt(10))
    # d = m1 - m0: +1 on 4 images, -1 on 3, 0 on 3 -> margin 0.1, SE sqrt(6.9 / 9 / 10)
    assert rec.margin == pytest.approx(0.1)
    assert rec.margin_se == pytest.approx(math.sqrt(6.9 / 9 / 10))
    assert rec.within_noise is True
    # the same gap on 200 images with op 1 harmless: far above 2 SE
    cell = DASCell(frames=2, nodes=1)
    ev = _fake_evaluate(cell, {0: _wrong_on(range(100), 200)}, n=200)
    _, (rec,) = select_ops(cell, ev, [0])
    assert rec.chosen == op0 and rec.margin == pytest.approx(0.5) and rec.within_noise is False


def test_ties_broken_by_the_loss():
    assert choose([0.1, 0.1, 0.05], [0.2, 0.3, 0.9], [0.5, 0.2, 0.3]) == [1, 0, 2]
    assert choose([0.1, 0.1 + 1e-12], [0.2, 0.2], [0.1, 0.4]) == [1, 0]  # then the weight
    cell = DASCell(frames=2, nodes=1)
    same = _wrong_on(range(3), 10)
    ev = _fake_evaluate(cell, {1: same, 3: same}, {3: torch.full((10,), 0.9)})
    _, (rec,) = select_ops(cell, ev, [0])
    assert rec.chosen == cell.ops[3] and rec.runner_up == cell.ops[1]
    assert rec.loss_rise[cell.ops[3]] == pytest.approx(0.8)
    assert rec.margin == 0 and rec.within_noise is True  # an accuracy tie is noise


def test_old_edge_record_dicts_load():
    old = {
        "edge": 2,
        "src": 0,
        "dst": 2,
        "base_acc": 0.5,
        "op_acc": {"rotate": 0.4, "identity": 0.5},
        "weights": {"rotate": 0.5, "identity": 0.5},
        "chosen": "rotate",
        "base_loss": 1.0,
        "op_loss": {"rotate": 1.2, "identity": 1.0},
        "drop": {"rotate": 0.1, "identity": 0.0},
    }
    rec = EdgeRecord.from_dict(old)
    assert rec.chosen == "rotate" and rec.drop_se is None and rec.within_noise is None
    assert EdgeRecord.from_dict(rec.to_dict()) == rec


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank, world, port, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank)
    )
    torch.set_num_threads(1)
    from das.runtime import init_distributed, shutdown_distributed

    env = init_distributed("cpu")
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    mine = [(x[:3], y[:3])] if rank == 0 else [(x[3:5], y[3:5]), (x[5:], y[5:])]
    got = evaluate(net, iter(mine), env, per_image=True)
    alone = evaluate(net, iter([(x, y)]), DistEnv(), per_image=True)
    if rank == 0:
        torch.save({"got": got, "alone": alone}, f"{out}/gather.pt")
    shutdown_distributed(env)


def test_per_image_evaluation_two_gloo_ranks(tmp_path):
    mp.spawn(_gather_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r = torch.load(tmp_path / "gather.pt")
    got, alone = r["got"], r["alone"]
    assert got["n"] == 8 and got["correct"].shape == (8,)
    assert torch.equal(got["correct"], alone["correct"])
    assert torch.allclose(got["losses"], alone["losses"])
    assert got["acc"] == pytest.approx(float(alone["correct"].mean()))


def test_consensus_votes_then_weight():
    a = Genotype(("rotate", "scale", "identity"), nodes=2, frames=2)
    b = Genotype(("rotate", "identity", "scale"), nodes=2, frames=2)
    weights = [
        [{"rotate": 0.3}, {"scale": 0.2, "identity": 0.1}, {"identity": 0.1, "scale": 0.4}],
        [{"rotate": 0.3}, {"scale": 0.3, "identity": 0.1}, {"identity": 0.1, "scale": 0.3}],
    ]
    g, edges = consensus([a, b], weights)
    assert g.ops == ("rotate", "scale", "scale")
    assert [e["agreement"] for e in edges] == [1.0, 0.5, 0.5]
    assert edges[1]["ops"] == ["scale", "identity"]


def test_seeds_writes_consensus(tmp_path):
    out = tmp_path / "c"
    argv = [*TINY, "--fusion", FAST_FUSION, "--eval-images", "8", "--seeds", "0,1"]
    assert search.main([*argv, "--out", str(out)]) == 0
    for s in (0, 1):
        assert (out / f"seed-{s}" / "genotype.json").is_file()
        assert (out / f"seed-{s}" / "report.md").is_file()
        cfg = json.loads((out / f"seed-{s}" / "config.json").read_text())
        assert cfg["runtime"]["seed"] == s and cfg["search"]["seeds"] is None
    summary = json.loads((out / "consensus.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["edges"]) == 3
    assert all(e["agreement"] in (0.5, 1.0) and len(e["ops"]) == 2 for e in summary["edges"])
    g = Genotype.load(out / "genotype.json")
    assert list(g.ops) == [e["op"] for e in summary["edges"]]
    report = (out / "report.md").read_text()
    assert "consensus" in report and "seed 1" in report
    seed_report = (out / "seed-0" / "report.md").read_text()
    assert "±" in seed_report and "decisions within noise" in seed_report
    sel = json.loads((out / "seed-0" / "selection.json").read_text())
    assert all(r["n_images"] == 24 for r in sel)  # all of the arch half (48 // 2)
    # resumable: the finished seeds resume to the same consensus
    before = (out / "consensus.json").read_text()
    assert search.main([*argv, "--out", str(out), "--resume"]) == 0
    assert (out / "consensus.json").read_text() == before


def test_bad_seeds_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        search.main(["--seeds", "0,x"])
    assert exc.value.code == 2 and "--seeds" in capsys.readouterr().err
