"""The typed run configuration: round trip through a dict (checkpoints, config.json), clear
errors for old or foreign configurations, and exit status 2 naming the option for settings
that cannot work (GSF channel counts included)."""

import dataclasses
import json

import pytest
import torch
from das_testing import TINY_DATA

from das import cli, evaluate, search, train
from das.config import ConfigError, RunConfig
from das.models import gsf_problem


@pytest.mark.parametrize("command", ["search", "train"])
def test_round_trip_through_dict_and_json(command):
    argv = ["--arch", "resnet18", "--width-mult", "0.5", "--seed", "3", "--no-progress"]
    cfg = cli.parse_config(command, [*argv, *(["--genotype", "random"] * (command == "train"))])
    d = dataclasses.asdict(cfg)
    assert RunConfig.from_dict(d) == cfg
    assert RunConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert cfg.model.arch == "resnet18" and cfg.seed == 3 and cfg.runtime.no_progress


def test_defaults_are_the_cli_defaults():
    s = cli.parse_config("search", [])
    assert (s.search.epochs, s.search.batch_size, s.model.frames, s.runtime.out) == (
        8,
        64,
        4,
        "runs/search",
    )
    assert s.train is None and s.cell.ops == "affine5"
    t = cli.parse_config("train", ["--variant", "baseline"])
    assert (t.train.epochs, t.model.frames, t.runtime.out) == (15, None, "runs/train")
    assert t.search is None and t.cell is None


def test_with_run_changes_fields_by_name():
    cfg = cli.parse_config("train", ["--variant", "baseline"])
    sub = cfg.with_run(seed=5, fusion="tsm", variant="replica", out="x")
    assert (sub.seed, sub.model.fusion, sub.train.variant, sub.runtime.out) == (
        5,
        "tsm",
        "replica",
        "x",
    )
    assert cfg.seed == 0  # frozen: a copy
    with pytest.raises(TypeError, match="no field 'nodes'"):
        cfg.with_run(nodes=3)


def test_missing_and_unknown_fields_are_named():
    d = dataclasses.asdict(cli.parse_config("search", []))
    del d["model"]["arch"]
    d["search"]["momentum"] = 0.9
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict(d, where="ckpt")
    assert "missing field 'model.arch'" in str(exc.value)
    assert "unknown field 'search.momentum'" in str(exc.value)
    d = dataclasses.asdict(cli.parse_config("search", []))
    del d["cell"]
    d["extra"] = {}
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict(d)
    assert "missing field 'cell'" in str(exc.value) and "unknown field 'extra'" in str(exc.value)
    flat = {"data": "digits", "arch": "resnet_tiny", "epochs": 8}  # a pre-RunConfig checkpoint
    with pytest.raises(ConfigError, match="missing field 'command'.*'arch'"):
        RunConfig.from_dict(flat)


@pytest.mark.parametrize(
    "command, argv, option",
    [
        ("search", ["--width-mult", "1.5"], "--width-mult 1.5"),
        ("train", ["--variant", "replica", "--gsf-ratio", "30"], "--gsf-ratio 30"),
        ("train", ["--ablation", "--genotype", "random", "--gsf-ratio", "30"], "--gsf-ratio"),
        ("search", ["--arch", "resnet50", "--width-mult", "0.1", "--gsf-ratio", "10"], "--gsf"),
    ],
)
def test_gsf_channel_counts_exit_2_naming_the_option(command, argv, option, capsys):
    main = search.main if command == "search" else train.main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "GSF would gate" in err and "Traceback" not in err


def test_gsf_checked_only_where_gsf_is_built():
    cli.parse_config("search", ["--width-mult", "1.5", "--fusion", "tsm"])
    cli.parse_config("train", ["--variant", "baseline", "--gsf-ratio", "30"])  # 2D: no GSF
    cli.parse_config("train", ["--variant", "replica", "--gsf-ratio", "50"])


@pytest.mark.parametrize("arch", ["resnet_tiny", "resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 1.5, 2.0])
@pytest.mark.parametrize("ratio", [10, 25, 30, 50, 100])
def test_gsf_problem_agrees_with_building_the_network(arch, width, ratio):
    from das.models import build_backbone

    try:
        build_backbone(arch, 10, 3, frames=2, fusion="gsf", gsf_ratio=ratio, width_mult=width)
        built = True
    except ValueError:
        built = False
    assert (gsf_problem(arch, width, ratio) is None) == built


def test_old_checkpoint_exits_2_naming_the_field(tmp_path, capsys):
    """A checkpoint whose config is a flat dict (written before RunConfig) or lacks a field:
    --resume and das.evaluate exit with status 2 and say which field."""
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"kind": "search", "config": {"data": "digits", "arch": "x"}}, ckpt)
    with pytest.raises(SystemExit) as exc:
        search.main(["--resume", "--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    assert "missing field 'command'" in capsys.readouterr().err
    cfg = dataclasses.asdict(cli.parse_config("train", [*TINY_DATA, "--variant", "baseline"]))
    del cfg["train"]["lr"]
    torch.save({"kind": "train", "config": cfg}, ckpt)
    with pytest.raises(SystemExit) as exc:
        train.main(["--resume", "--out", str(tmp_path), "--variant", "baseline"])
    assert exc.value.code == 2
    assert "missing field 'train.lr'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        evaluate.main([str(ckpt)])
    assert exc.value.code == 2
    assert "missing field 'train.lr'" in capsys.readouterr().err
    torch.save({"kind": "train", "config": cfg}, ckpt)
    with pytest.raises(SystemExit) as exc:
        search.main(["--resume", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "not a das search checkpoint" in capsys.readouterr().err


def test_run_writes_config_json_and_checkpoint_config(tmp_path):
    out = tmp_path / "t"
    argv = [*TINY_DATA, "--variant", "baseline", "--epochs", "1", "--max-steps", "1"]
    assert train.main([*argv, "--out", str(out)]) == 0
    saved = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert saved == cli.parse_config("train", [*argv, "--out", str(out)])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert RunConfig.from_dict(ckpt["config"]) == saved
