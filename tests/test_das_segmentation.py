"""``--task segmentation`` end to end on a tiny fake CamVid tree (24x32 images): search writes
genotype, logs and report; every training variant (das-nounwarp included) trains and
evaluates; das.evaluate prints and writes mIoU; resume repeats an uninterrupted run bit for
bit; 2 gloo processes stay identical; bad input exits with status 2."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from das import cli, evaluate, search, train
from das.cell import Genotype
from das.config import RunConfig

SHARED_CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
TIMING_KEYS = {"sec_per_step", "sec_arch_step", "sec_weight_step", "epoch_sec"}


def _fake_camvid(root: Path, sizes=(("train", 8), ("val", 4), ("test", 2))) -> Path:
    """Masks: a top class (0..2) over road (3), a void (11) strip; images follow the masks."""
    rng = np.random.default_rng(0)
    for split, n in sizes:
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            mask = np.full((24, 32), 3, np.uint8)
            mask[:12] = rng.integers(0, 3)
            mask[:, :4] = 11
            noise = rng.integers(0, 30, (24, 32, 3))
            image = np.stack([mask * 20, mask * 10, 255 - mask * 20], -1) + noise
            Image.fromarray(image.astype(np.uint8)).save(root / split / f"f{i}.png")
            Image.fromarray(mask).save(root / f"{split}annot" / f"f{i}.png")
    return root


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    return _fake_camvid(tmp_path_factory.mktemp("data") / "camvid")


def _common(data: Path) -> list[str]:
    return [
        *("--task", "segmentation", "--data", str(data), "--batch-size", "2"),
        *("--crop", "16,24", "--threads", "1", "--no-progress"),
    ]


def _search_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *_common(data),
        *("--frames", "2", "--nodes", "2", "--epochs", "2", "--steps-per-epoch", "2"),
        *("--fusion", "tsm", "--eval-images", "4", "--out", str(out), *extra),
    ]


@pytest.fixture(scope="module")
def searched(camvid, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "s"
    assert search.main(_search_args(camvid, out)) == 0
    return out


def test_search_writes_genotype_logs_and_report(searched):
    g = Genotype.load(searched / "genotype.json")
    assert len(g.ops) == 3 and g.frames == 2
    for name in ("report.md", "tau.png", "selection.png", "curves.png", "video.png"):
        assert (searched / name).is_file(), name
    assert (searched / "predictions.png").is_file()
    log = json.loads((searched / "search_log.json").read_text())
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert {"val_miou", "val_pixel_acc", "train_miou", "arch_miou"} <= set(log[2])
    assert 0 <= log[2]["val_miou"] <= 1 and "val_acc" not in log[2]
    selection = json.loads((searched / "selection.json").read_text())
    assert sorted(r["edge"] for r in selection) == [0, 1, 2]
    report = (searched / "report.md").read_text()
    assert "segmentation" in report and "val mIoU" in report
    assert "![predictions](predictions.png)" in report
    cfg = RunConfig.from_dict(json.loads((searched / "config.json").read_text()))
    assert cfg.segmentation and cfg.task.crop == "16,24" and cfg.search.batch_size == 2


VARIANTS = ["das", "das-nounwarp", "baseline", "augment", "replica", "shuffle"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_variant_and_evaluate(variant, camvid, searched, tmp_path, capsys):
    out = tmp_path / variant
    argv = [*_common(camvid), "--variant", variant, "--epochs", "1", "--max-steps", "2"]
    argv += ["--genotype", str(searched / "genotype.json"), "--fusion", "tsm", "--out", str(out)]
    assert train.main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["variant"] == variant and result["steps"] == 2
    assert 0 <= result["val_miou"] <= 1 and set(result["val_class_iou"]) >= {"sky", "road"}
    assert (out / "predictions.png").is_file() and (out / "curves.png").is_file()
    if variant != "das":
        return
    capsys.readouterr()
    assert evaluate.main([str(out / "checkpoint.pt"), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "pixel accuracy" in text and "left out of the mean" in text
    saved = json.loads((out / "eval.json").read_text())
    assert saved["miou"] == pytest.approx(result["val_miou"])
    assert saved["class_iou"]["building"] is None  # absent from truth and prediction
    assert evaluate.main([str(out / "checkpoint.pt"), "--split", "test"]) == 0
    assert json.loads((out / "eval_test.json").read_text())["images"] == 2


def test_random_genotype_and_ablation_table_in_miou(camvid, tmp_path):
    argv = [*_common(camvid), "--genotype", "random", "--fusion", "tsm", "--frames", "2"]
    argv += ["--epochs", "1", "--max-steps", "1", "--ablation", "--variants", "das,das-nounwarp"]
    argv += ["--seeds", "0,1"]
    assert train.main([*argv, "--out", str(tmp_path / "a")]) == 0
    table = (tmp_path / "a" / "ablation.md").read_text()
    assert "val mIoU %" in table and "| das-nounwarp | tsm |" in table
    assert "DAS minus each variant, paired by seed (val mIoU points" in table
    results = json.loads((tmp_path / "a" / "ablation.json").read_text())
    assert [(r["variant"], r["seed"]) for r in results] == [
        ("das", 0),
        ("das", 1),
        ("das-nounwarp", 0),
        ("das-nounwarp", 1),
    ]
    assert results[0]["genotype"] != results[1]["genotype"]  # random genotypes, seeded
    # --jobs: each run in its own process, each loading its own data (its seed's augmentation)
    argv[argv.index("das,das-nounwarp")] = "das"
    assert train.main([*argv, "--jobs", "2", "--out", str(tmp_path / "p")]) == 0
    parallel = json.loads((tmp_path / "p" / "ablation.json").read_text())
    assert [r["val_miou"] for r in parallel] == [r["val_miou"] for r in results[:2]]


def test_nounwarp_and_das_differ_only_in_unwarping(camvid, searched):
    from das import segtask

    cfg = cli.parse_config(
        "train",
        [*_common(camvid), "--genotype", str(searched / "genotype.json"), "--fusion", "tsm"],
    )
    g = Genotype.load(searched / "genotype.json")
    das = segtask.seg_variant_network(cfg, g, 11, 4 / 3, ((0.5,) * 3, (0.25,) * 3))
    nounwarp = segtask.seg_variant_network(
        cfg.with_run(variant="das-nounwarp"), g, 11, 4 / 3, ((0.5,) * 3, (0.25,) * 3)
    )
    nounwarp.load_state_dict(das.state_dict())
    das.eval(), nounwarp.eval()
    x = torch.randn(1, 3, 24, 32)
    frames = das.trunk(das.video(x), (24, 32))[0]
    torch.testing.assert_close(
        nounwarp(x)["out"], das.merge(frames.mean(1, keepdim=True), (24, 32))[0]
    )
    assert not torch.allclose(das(x)["out"], nounwarp(x)["out"])


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_search_and_train_resume_bit_identical(camvid, tmp_path, monkeypatch):
    from das.segjobs import SegSearcher, SegTrainer

    args = ["--epochs", "3"]
    full = tmp_path / "full"
    assert search.main(_search_args(camvid, full, *args)) == 0
    original = SegSearcher.evaluate
    calls = {"n": 0}

    def flaky(self):  # dies in epoch 2's evaluation, after epoch 1's checkpoint
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(SegSearcher, "evaluate", flaky)
    cut = tmp_path / "cut"
    assert search.main(_search_args(camvid, cut, *args)) == 130  # as Ctrl-C
    monkeypatch.setattr(SegSearcher, "evaluate", original)
    assert search.main(["--resume", "--out", str(cut), "--no-progress"]) == 0
    a = json.loads((full / "search_log.json").read_text())
    b = json.loads((cut / "search_log.json").read_text())
    assert _strip(a) == _strip(b)
    assert (full / "genotype.json").read_text() == (cut / "genotype.json").read_text()
    ca, cb = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (full, cut))
    for key in ("cell", "backbone"):
        for name, value in ca[key].items():
            assert torch.equal(value, cb[key][name]), f"{key}.{name}"

    targs = [*_common(camvid), "--genotype", str(full / "genotype.json"), "--fusion", "tsm"]
    targs += ["--epochs", "3", "--variant", "shuffle"]
    assert train.main([*targs, "--out", str(tmp_path / "tfull")]) == 0
    original_eval = SegTrainer.evaluate
    calls["n"] = 0

    def flaky_train(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original_eval(self)

    monkeypatch.setattr(SegTrainer, "evaluate", flaky_train)
    assert train.main([*targs, "--out", str(tmp_path / "tcut")]) == 130  # as Ctrl-C
    monkeypatch.setattr(SegTrainer, "evaluate", original_eval)
    assert train.main(["--resume", "--out", str(tmp_path / "tcut"), "--no-progress"]) == 0
    ta, tb = (json.loads((tmp_path / d / "train_log.json").read_text()) for d in ("tfull", "tcut"))
    assert _strip(ta) == _strip(tb)
    na = torch.load(tmp_path / "tfull" / "checkpoint.pt", weights_only=False)["network"]
    nb = torch.load(tmp_path / "tcut" / "checkpoint.pt", weights_only=False)["network"]
    assert all(torch.equal(v, nb[k]) for k, v in na.items())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, data, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from das.runtime import init_distributed, shutdown_distributed
    from das.segjobs import SegSearcher, SegTrainer

    env = init_distributed("cpu")
    captured = {}
    search_run, train_run = SegSearcher.run, SegTrainer.run

    def run_search(self):
        result = search_run(self)
        captured["search"] = {
            k: v.detach().clone()
            for k, v in [*self.cell.named_parameters(), *self.backbone.named_parameters()]
        }
        return result

    def run_train(self):
        result = train_run(self)
        captured["train"] = {k: v.detach().clone() for k, v in self.network.named_parameters()}
        return result

    SegSearcher.run, SegTrainer.run = run_search, run_train
    data = Path(data)
    argv = _search_args(data, Path(out) / "search", "--epochs", "1", "--steps-per-epoch", "2")
    search.run_search(cli.parse_config("search", [*argv, "--select", "argmax"]), env)
    targv = [*_common(data), "--genotype", f"{out}/search/genotype.json", "--fusion", "tsm"]
    targv += ["--out", f"{out}/train", "--epochs", "1", "--max-steps", "2"]
    train.run_train(cli.parse_config("train", targv), env)
    torch.save(captured, f"{out}/params_rank{rank}.pt")
    shutdown_distributed(env)


def test_ddp_two_gloo_processes_agree(camvid, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(camvid), str(tmp_path)), nprocs=2, join=True)
    p0 = torch.load(tmp_path / "params_rank0.pt")
    p1 = torch.load(tmp_path / "params_rank1.pt")
    for phase in ("search", "train"):
        assert p0[phase].keys() == p1[phase].keys() and p0[phase]
        for name in p0[phase]:
            assert torch.equal(p0[phase][name], p1[phase][name]), f"{phase}: {name}"
    assert (tmp_path / "train" / "result.json").is_file()


def test_config_round_trip_and_old_configs_are_classification(camvid):
    cfg = cli.parse_config("search", _search_args(camvid, Path("x")))
    d = dataclasses.asdict(cfg)
    assert RunConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert cfg.task.head == "psp" and cfg.task.output_stride == 8
    plain = dataclasses.asdict(cli.parse_config("search", []))
    del plain["task"]  # written before the task axis
    old = RunConfig.from_dict(plain)
    assert not old.segmentation and old.task.task == "classification"
    assert old.search.batch_size == 64 and old.search.eval_images == 256
    t = cli.parse_config("train", [*_common(camvid), "--genotype", "random", "--ablation"])
    assert "das-nounwarp" in t.train.variants.split(",")
    from das.segtask import load_seg_bundle

    full = cli.parse_config("search", [*_common(camvid), "--crop", "full"])
    assert full.task.crop is None and load_seg_bundle(full).train.augment.crop == (24, 32)
    assert cli.parse_config("search", [*_common(camvid), "--crop", "64"]).task.crop == "64,64"


@pytest.mark.parametrize(
    "command, argv, message",
    [
        ("search", ["--task", "segmentation"], "--task segmentation needs a segmentation"),
        ("train", ["--variant", "das-nounwarp", "--genotype", "random"], "--variant das-nounwarp"),
        ("search", ["--crop", "0,3"], "--crop: expected H,W"),
        ("search", ["--crop", "a"], "--crop: expected H,W"),
        ("search", ["--head", "fcn"], "--head: invalid choice"),
        ("search", ["--output-stride", "32"], "--output-stride: invalid choice"),
        ("train", ["--unwarp-average", "max"], "--unwarp-average: invalid choice"),
    ],
)
def test_bad_cli_exits_2(command, argv, message, capsys):
    main = {"search": search.main, "train": train.main}[command]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_data_exits_2(camvid, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # a segmentation folder for classification
        train.main(["--data", str(camvid), "--variant", "baseline"])
    assert exc.value.code == 2 and "use --task segmentation" in capsys.readouterr().err
    broken = _fake_camvid(tmp_path / "broken", (("train", 4), ("val", 2)))
    Image.fromarray(np.full((24, 32), 40, np.uint8)).save(broken / "valannot" / "f1.png")
    argv = [*_common(broken), "--variant", "baseline", "--epochs", "1", "--max-steps", "1"]
    with pytest.raises(SystemExit) as exc:
        train.main([*argv, "--out", str(tmp_path / "t")])
    assert exc.value.code == 2 and "f1.png" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # no test split
        evaluate.main([str(tmp_path / "nothing.pt")])
    assert exc.value.code == 2


@pytest.mark.skipif(not (SHARED_CAMVID / "train").is_dir(), reason=f"no {SHARED_CAMVID}")
def test_real_camvid_one_step(tmp_path):
    argv = [
        *("--task", "segmentation", "--data", str(SHARED_CAMVID), "--variant", "baseline"),
        *("--limit-train", "4", "--limit-val", "2", "--batch-size", "2", "--epochs", "1"),
        *("--max-steps", "1", "--no-progress", "--out", str(tmp_path / "c")),
    ]
    assert train.main(argv) == 0
    result = json.loads((tmp_path / "c" / "result.json").read_text())
    assert "camvid" in result["data"] and "3x180x240" in result["data"]
    assert len(result["val_class_iou"]) == 11
