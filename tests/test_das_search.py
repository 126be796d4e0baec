"""End-to-end search + selection (tiny, seconds), resume == uninterrupted, DDP with 2 gloo
processes, and bad CLI input exiting with status 2."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from das_testing import FAST_FUSION, NO_CIFAR, SHARED, TINY_DATA

from das import cli, search, train
from das.cell import Genotype

TINY = [*TINY_DATA, "--frames", "2", "--nodes", "2", "--epochs", "2", "--steps-per-epoch", "2"]
TRAIN_TINY = TINY_DATA
TIMING_KEYS = {"sec_per_step", "sec_arch_step", "sec_weight_step", "epoch_sec"}


def _search(out, *extra):
    assert search.main([*TINY, "--out", str(out), *extra]) == 0
    return out


def test_search_end_to_end_gsf(tmp_path):
    out = _search(tmp_path / "s", "--fusion", "gsf", "--finetune-epochs", "0.5")
    g = Genotype.load(out / "genotype.json")
    assert len(g.ops) == 3 and g.frames == 2 and set(g.ops) <= set(g.search_space)
    for name in (
        "report.md",
        "tau.png",
        "selection.png",
        "curves.png",
        "video.png",
        "search_log.csv",
        "search_log.json",
        "selection.json",
        "checkpoint.pt",
    ):
        assert (out / name).is_file(), name
    log = json.loads((out / "search_log.json").read_text())
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert len(log[2]["weights"]["values"]) == 3 and "val_acc" in log[2]
    header = (out / "search_log.csv").read_text().splitlines()[0]
    assert "train_loss" in header and "tau_e2_rotate" in header
    sel = json.loads((out / "selection.json").read_text())
    assert sorted(r["edge"] for r in sel) == [0, 1, 2]
    assert all(r["chosen"] == g.ops[r["edge"]] for r in sel)
    report = (out / "report.md").read_text()
    assert "s per search step" in report and "![tau](tau.png)" in report
    assert "![video](video.png)" in report
    assert not list(out.glob("*.tmp"))


def test_second_order_learned_magnitudes_reference_ops(tmp_path):
    out = _search(
        tmp_path / "s2",
        *("--order", "2", "--learn-magnitudes", "--epochs", "1", "--fusion", FAST_FUSION),
        *("--select", "argmax", "--ops-backend", "reference"),
    )
    assert "ops backend reference" in (out / "report.md").read_text()
    log = json.loads((out / "search_log.json").read_text())
    assert "magnitudes" in log[-1] and log[-1]["magnitudes"] != log[0]["magnitudes"]
    assert log[-1]["tau"]["values"] != log[0]["tau"]["values"]


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    args = ["--fusion", FAST_FUSION, "--epochs", "3", "--deterministic"]  # bitwise on CUDA too
    full = _search(tmp_path / "full", *args)

    calls = {"n": 0}
    original_eval = search.Searcher.evaluate

    def flaky_eval(self, *args):  # dies in epoch 2's evaluation, after epoch 1's checkpoint
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original_eval(self, *args)

    monkeypatch.setattr(search.Searcher, "evaluate", flaky_eval)
    assert search.main([*TINY, "--out", str(tmp_path / "cut"), *args]) == 130  # as Ctrl-C
    assert not (tmp_path / "cut" / "genotype.json").exists()
    # resume with the wrong mid-selection death: evaluation 3 + 6 + 2 is inside edge 2
    calls["n"] = -100
    calls_sel = {"n": 0}

    def flaky_select_eval(self, *args):
        calls_sel["n"] += 1
        if self.stage == "select" and calls_sel["n"] == 2 + 6 + 2:
            raise KeyboardInterrupt
        return original_eval(self, *args)

    monkeypatch.setattr(search.Searcher, "evaluate", flaky_select_eval)
    assert search.main(["--resume", "--out", str(tmp_path / "cut"), "--no-progress"]) == 130
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert ckpt["stage"] == "select" and len(ckpt["records"]) == 1
    monkeypatch.setattr(search.Searcher, "evaluate", original_eval)
    assert search.main(["--resume", "--out", str(tmp_path / "cut"), "--no-progress"]) == 0

    a = json.loads((full / "search_log.json").read_text())
    b = json.loads((tmp_path / "cut" / "search_log.json").read_text())
    assert _strip(a) == _strip(b)
    assert (full / "genotype.json").read_text() == (tmp_path / "cut" / "genotype.json").read_text()
    sa = json.loads((full / "selection.json").read_text())
    sb = json.loads((tmp_path / "cut" / "selection.json").read_text())
    assert sa == sb
    ca = torch.load(full / "checkpoint.pt", weights_only=False)
    cb = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for key in ("cell", "backbone"):
        for name, value in ca[key].items():
            assert torch.equal(value, cb[key][name]), f"{key}.{name}"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_params_worker(rank, world, port, out):
    """Runs search then dumps the live parameters of each rank."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from das import train
    from das.runtime import init_distributed, shutdown_distributed

    env = init_distributed("cpu")
    captured = {}
    original_run = search.Searcher.run

    def run_and_capture(self):
        result = original_run(self)
        captured["search"] = {
            k: v.detach().clone()
            for k, v in [*self.cell.named_parameters(), *self.backbone.named_parameters()]
        }
        return result

    search.Searcher.run = run_and_capture
    original_train_run = train.Trainer.run

    def train_and_capture(self):
        result = original_train_run(self)
        captured["train"] = {k: v.detach().clone() for k, v in self.network.named_parameters()}
        return result

    train.Trainer.run = train_and_capture
    cfg = cli.parse_config(
        "search",
        [
            *TINY,
            *("--fusion", FAST_FUSION, "--out", f"{out}/search", "--epochs", "1"),
            *("--steps-per-epoch", "3", "--select", "argmax"),
        ],
    )
    search.run_search(cfg, env)
    tcfg = cli.parse_config(
        "train",
        [
            *TRAIN_TINY,
            *("--fusion", FAST_FUSION, "--genotype", f"{out}/search/genotype.json"),
            *("--out", f"{out}/train", "--epochs", "1", "--max-steps", "3"),
        ],
    )
    train.run_train(tcfg, env)
    torch.save(captured, f"{out}/params_rank{rank}.pt")
    shutdown_distributed(env)


def test_ddp_two_gloo_processes_agree(tmp_path):
    mp.spawn(_ddp_params_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    p0 = torch.load(tmp_path / "params_rank0.pt")
    p1 = torch.load(tmp_path / "params_rank1.pt")
    for phase in ("search", "train"):
        assert p0[phase].keys() == p1[phase].keys()
        for name in p0[phase]:
            assert torch.equal(p0[phase][name], p1[phase][name]), f"{phase}: {name}"
    # the search moved tau, so the ranks agree on something non-trivial
    assert (tmp_path / "search" / "genotype.json").is_file()
    assert (tmp_path / "train" / "result.json").is_file()
    assert not (tmp_path / "search" / "checkpoint.pt.tmp").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs: expected a positive integer"),
        (["--batch-size", "x"], "--batch-size: expected a positive integer"),
        (["--data", "/nonexistent/cifar"], "data path not found"),
        (["--ops", "rotate,blur"], "--ops: unknown op"),
        (["--order", "3"], "--order: invalid choice"),
        (["--amp", "--device", "cpu"], "--amp needs CUDA"),
        (["--warmup-epochs", "5", "--epochs", "2"], "--warmup-epochs"),
    ],
)
def test_bad_cli_exits_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        search.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_cli_real_exit_code_and_help():
    bad = subprocess.run(
        [sys.executable, "-m", "das.search", "--frames", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--frames" in bad.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "das.search", "--help"], capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0
    for option in ("--order", "--resume", "--ops-backend", "--finetune-epochs", "--amp"):
        assert option in helped.stdout


@pytest.mark.skipif(NO_CIFAR, reason=f"no {SHARED}/cifar10_small.npz")
def test_search_on_cifar10_small(tmp_path):
    """Real RGB data through the 13-op space (colour ops included), then training with a
    genotype of colour ops."""
    data = str(SHARED / "cifar10_small.npz")
    out = _search(
        tmp_path / "c",
        *("--data", data, "--fusion", FAST_FUSION, "--epochs", "1", "--image-size", "16"),
        *("--ops", "aa13"),
    )
    text = (out / "report.md").read_text()
    assert "npz: 48 train" in text and "3x16x16" in text
    g = Genotype.load(out / "genotype.json")
    assert len(g.search_space) == 13 and set(g.ops) <= set(g.search_space)
    assert (out / "video.png").is_file()
    args = [*TRAIN_TINY, "--data", data, "--image-size", "16", "--fusion", FAST_FUSION]
    Genotype(("solarize", "rotate", "equalize"), nodes=2, frames=2).save(tmp_path / "g.json")
    args += ["--genotype", str(tmp_path / "g.json"), "--epochs", "1", "--max-steps", "2"]
    assert train.main([*args, "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "result.json").read_text())["steps"] == 2


def test_workers_give_the_same_search(tmp_path):
    """--workers N reads the batches in DataLoader worker processes: the same batches."""
    args = ["--fusion", FAST_FUSION, "--eval-images", "16"]
    plain = _search(tmp_path / "plain", *args)
    workers = _search(tmp_path / "workers", *args, "--workers", "2")
    assert (plain / "genotype.json").read_text() == (workers / "genotype.json").read_text()
    logs = [json.loads((d / "search_log.json").read_text()) for d in (plain, workers)]
    for a, b in zip(*logs):
        assert {k: v for k, v in a.items() if k not in TIMING_KEYS} == {
            k: v for k, v in b.items() if k not in TIMING_KEYS
        }
