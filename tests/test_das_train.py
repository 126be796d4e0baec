"""Training from a genotype: every variant, the ablation table, resume == uninterrupted,
--eval-only / das.evaluate, and CLI errors."""

import json

import pytest
import torch
from das_testing import FAST_FUSION, NO_CIFAR, SHARED, TINY_DATA

from das import evaluate, train
from das.cell import random_genotype

TINY = [*TINY_DATA, "--fusion", FAST_FUSION]


@pytest.fixture
def genotype_file(tmp_path):
    path = tmp_path / "genotype.json"
    random_genotype(nodes=2, frames=2, seed=0).save(path)
    return path


def test_train_das_resume_and_eval(tmp_path, genotype_file, monkeypatch, capsys):
    args = [*TINY, "--genotype", str(genotype_file), "--epochs", "3", "--deterministic"]
    full = tmp_path / "full"
    assert train.main([*args, "--out", str(full)]) == 0
    result = json.loads((full / "result.json").read_text())
    assert result["variant"] == "das" and result["frames"] == 2 and result["steps"] == 18
    for name in ("train_log.csv", "train_log.json", "curves.png", "checkpoint.pt"):
        assert (full / name).is_file()

    original = train.Trainer.evaluate
    calls = {"n": 0}

    def dying_evaluate(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(train.Trainer, "evaluate", dying_evaluate)
    cut = tmp_path / "cut"
    assert train.main([*args, "--out", str(cut)]) == 130  # Ctrl-C: exit 130
    monkeypatch.setattr(train.Trainer, "evaluate", original)
    assert train.main(["--resume", "--out", str(cut), "--no-progress"]) == 0
    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(cut / "checkpoint.pt", weights_only=False)
    for name, value in a["network"].items():
        assert torch.equal(value, b["network"][name]), name
    assert json.loads((cut / "result.json").read_text())["val_acc"] == result["val_acc"]

    capsys.readouterr()
    assert train.main(["--eval-only", "--out", str(full)]) == 0
    assert json.loads(capsys.readouterr().out)["val_acc"] == pytest.approx(result["val_acc"])
    assert evaluate.main([str(full / "checkpoint.pt")]) == 0
    assert json.loads((full / "eval.json").read_text())["val_acc"] == pytest.approx(
        result["val_acc"]
    )


def test_ablation_table(tmp_path, genotype_file):
    out = tmp_path / "abl"
    assert (
        train.main(
            [
                *TINY,
                "--genotype",
                str(genotype_file),
                "--ablation",
                "--epochs",
                "1",
                "--max-steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == ["das", "baseline", "augment", "replica", "shuffle"]
    assert all(r["steps"] == 2 for r in rows)
    by = {r["variant"]: r for r in rows}
    assert by["baseline"]["frames"] == 1 and by["baseline"]["fusion"] == "none"
    assert by["augment"]["frames"] == 1 and by["replica"]["frames"] == 2
    assert by["das"]["fusion"] == FAST_FUSION
    table = (out / "ablation.md").read_text()
    assert "| variant | fusion | T |" in table and "shuffle" in table
    assert "last train acc %" in table
    last_train_acc = json.loads((out / "das" / "train_log.json").read_text())[-1]["train_acc"]
    assert by["das"]["train_acc"] == last_train_acc
    # --resume reuses finished variants, also results written before they carried a seed
    # or the last training accuracy
    old = out / "das" / "result.json"
    old.write_text(
        json.dumps(
            {k: v for k, v in json.loads(old.read_text()).items() if k not in ("seed", "train_acc")}
        )
    )
    assert (
        train.main(
            [
                *TINY,
                "--genotype",
                str(genotype_file),
                "--ablation",
                "--epochs",
                "1",
                "--max-steps",
                "2",
                "--out",
                str(out),
                "--resume",
            ]
        )
        == 0
    )
    resumed = {r["variant"]: r for r in json.loads((out / "ablation.json").read_text())}
    assert resumed["das"]["train_acc"] == last_train_acc and resumed["das"]["seed"] == 0


def test_ablation_seeds_in_parallel_equal_sequential(tmp_path, genotype_file):
    """--seeds trains every variant once per seed; --jobs 2 runs them in 2 spawned processes
    with the same results as one after another; the table has mean +- sd and paired DAS
    differences."""
    args = [*TINY, "--genotype", str(genotype_file), "--ablation", "--variants", "das,baseline"]
    args += ["--epochs", "1", "--max-steps", "2", "--seeds", "3,5"]
    runs = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        assert train.main([*args, "--jobs", str(jobs), "--out", str(out)]) == 0
        runs[jobs] = json.loads((out / "ablation.json").read_text())
        assert all(
            (out / v / f"seed{s}" / "result.json").is_file()
            for v in ("das", "baseline")
            for s in (3, 5)
        )
    keys = [(r["variant"], r["seed"]) for r in runs[1]]
    assert keys == [("das", 3), ("das", 5), ("baseline", 3), ("baseline", 5)]
    assert [(r["variant"], r["seed"], r["val_loss"]) for r in runs[2]] == [
        (*k, r["val_loss"]) for k, r in zip(keys, runs[1])
    ]
    table = (tmp_path / "jobs2" / "ablation.md").read_text()
    assert "| das | " in table and " ± " in table and "DAS minus each variant" in table
    assert "| baseline | none | 2 |" in table  # paired row: das vs baseline over 2 seeds


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0,1"], "options of --ablation"),
        (["--ablation", "--genotype", "random", "--seeds", "0,x"], "--seeds: expected"),
        (["--ablation", "--genotype", "random", "--seeds", "1,1"], "--seeds: expected"),
        (["--variant", "das"], "needs --genotype"),
        (["--genotype", "/nonexistent.json"], "genotype file not found"),
        (["--ablation", "--variants", "das,bogus", "--genotype", "random"], "unknown ['bogus']"),
        (["--eval-only", "--checkpoint", "/nonexistent.pt"], "checkpoint not found"),
        (["--max-steps", "0"], "--max-steps: expected a positive integer"),
        (["--fusion", "lstm"], "--fusion: invalid choice"),
    ],
)
def test_train_bad_cli_exits_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_evaluate_bad_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "x.pt"
    torch.save({"kind": "search"}, bogus)
    with pytest.raises(SystemExit) as exc:
        evaluate.main([str(bogus)])
    assert exc.value.code == 2 and "not a das train checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(NO_CIFAR, reason=f"no {SHARED}/cifar10_small.npz")
def test_train_on_cifar10_small(tmp_path):
    out = tmp_path / "c"
    assert (
        train.main(
            [
                *TINY,
                "--data",
                str(SHARED / "cifar10_small.npz"),
                "--genotype",
                "random",
                "--frames",
                "2",
                "--epochs",
                "1",
                "--max-steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "result.json").read_text())
    assert "npz: 48 train" in result["data"] and result["steps"] == 2
