"""Image-to-image policies (das.policy, ``das.train --policy``): spec parsing and errors,
kornia policies augment training images only, seeded reproducibility, DAS image-to-image
draws one of the genotype's frames, DRA policies, and the ablation over policies."""

import json

import pytest
import torch
from das_testing import TINY_DATA

from das import evaluate, train
from das.cell import DiscreteCell, Genotype
from das.dra import DRAPolicy
from das.policy import PolicySpec, build_policy, parse_policy, parse_policy_list

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _genotype(tmp_path, frames=3, mode="centered", name="g.json"):
    path = tmp_path / name
    Genotype(("translate_x", "brightness", "rotate"), nodes=2, frames=frames, mode=mode).save(path)
    return path


def test_specs_parse_and_name(tmp_path):
    assert parse_policy("flipcrop") == PolicySpec("flipcrop")
    assert parse_policy("randaugment:2,9") == PolicySpec("randaugment", (2, 9))
    assert parse_policy("randaugment:2,9").name == "randaugment-2-9"
    assert parse_policy("autoaugment:cifar10").text == "autoaugment:cifar10"
    g = _genotype(tmp_path)
    assert parse_policy(f"das:{g}").kind == "das" and parse_policy(str(g)).kind == "das"
    specs = parse_policy_list("flipcrop,randaugment:2,9,trivialaugment")
    assert [s.text for s in specs] == ["flipcrop", "randaugment:2,9", "trivialaugment"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("fancyaugment", "unknown policy"),
        ("randaugment:2", "randaugment:N,M"),
        ("randaugment:0,9", "randaugment:N,M"),
        ("randaugment:2,30", "0 < M < 30"),
        ("randaugment:2,0", "0 < M < 30"),
        ("randaugment:16,9", "1 <= N <= 15"),
        ("randaugment:2,x", "randaugment:N,M"),
        ("autoaugment:mnist", "autoaugment:cifar10|imagenet|svhn"),
        ("trivialaugment:3", "takes no arguments"),
        ("dra:missing.json", "not found"),
    ],
)
def test_bad_specs_exit_2_naming_the_option(text, message, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main([*TINY_DATA, "--policy", text])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--policy" in err and message in err


def test_bad_files_and_combinations(tmp_path, capsys):
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    t1 = _genotype(tmp_path, frames=1, mode="centered", name="t1.json")
    cases = [
        (["--policy", f"das:{junk}"], "neither a DRA policy"),
        (["--policy", f"das:{t1}"], "--step-mode forward"),
        (["--policy", "flipcrop", "--variant", "das"], "2D baseline"),
        (["--policies", "flipcrop"], "option of --ablation"),
        (["--ablation", "--policies", "flipcrop,flipcrop"], "repeat"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            train.main([*TINY_DATA, *argv])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err, argv


@pytest.mark.parametrize("spec", ["randaugment:2,9", "trivialaugment", "autoaugment:cifar10"])
def test_kornia_policies_augment_training_images_only(spec):
    policy = build_policy(parse_policy(spec), MEAN, STD)
    x = (torch.rand(8, 3, 16, 16) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    policy.train()
    torch.manual_seed(0)
    a = policy(x)
    torch.manual_seed(0)
    b = policy(x)
    assert a.shape == (8, 1, 3, 16, 16)
    torch.testing.assert_close(a, b)  # seeded: the same augmented batch
    assert (a[:, 0] - x).abs().amax() > 0.05
    policy.eval()
    assert torch.equal(policy(x), x[:, None])  # evaluation sees the clean image


def test_kornia_policy_on_grayscale_images():
    policy = build_policy(parse_policy("randaugment:3,15"), (0.5,), (0.25,)).train()
    torch.manual_seed(1)
    out = policy(torch.randn(6, 1, 12, 12))
    assert out.shape == (6, 1, 1, 12, 12) and bool(torch.isfinite(out).all())


def test_das_policy_draws_one_frame_of_the_genotype(tmp_path):
    path = _genotype(tmp_path)
    policy = build_policy(parse_policy(f"das:{path}"), MEAN, STD).train()
    x = torch.randn(5, 3, 10, 10)
    torch.manual_seed(0)
    out = policy(x)[:, 0]
    video = DiscreteCell(Genotype.load(path), 1.0, MEAN, STD)(x) / ((2.0**2 - 1) / 2)
    for b in range(5):
        assert any(torch.allclose(out[b], video[b, t], atol=1e-6) for t in range(3)), b
    forward1 = _genotype(tmp_path, frames=1, mode="forward", name="f1.json")
    one = build_policy(parse_policy(f"das:{forward1}"), MEAN, STD).train()(x)
    assert (one[:, 0] - x).abs().amax() > 0.01  # the one frame is transformed


def test_dra_policy_applies_as_augmentation(tmp_path):
    path = tmp_path / "policy.json"
    DRAPolicy(("rotate", "brightness", "invert"), "cifar", 2).save(path)
    assert parse_policy(str(path)).kind == "dra"
    policy = build_policy(parse_policy(f"dra:{path}"), MEAN, STD).train()
    torch.manual_seed(0)
    out = policy(torch.randn(16, 3, 12, 12))
    assert out.shape == (16, 1, 3, 12, 12) and bool(torch.isfinite(out).all())


def test_train_with_a_policy_and_the_ablation_over_policies(tmp_path):
    out = tmp_path / "one"
    argv = [*TINY_DATA, "--policy", "trivialaugment", "--epochs", "1", "--max-steps", "2"]
    assert train.main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["variant"] == "trivialaugment" and result["frames"] == 1
    ab = tmp_path / "ab"
    argv = [*TINY_DATA, "--ablation", "--policies", "flipcrop,randaugment:1,5", "--seeds", "0,1"]
    assert train.main([*argv, "--epochs", "1", "--max-steps", "2", "--out", str(ab)]) == 0
    runs = json.loads((ab / "ablation.json").read_text())
    assert [(r["variant"], r["seed"]) for r in runs] == [
        ("flipcrop", 0),
        ("flipcrop", 1),
        ("randaugment-1-5", 0),
        ("randaugment-1-5", 1),
    ]
    assert (ab / "randaugment-1-5" / "seed1" / "checkpoint.pt").is_file()
    text = (ab / "ablation.md").read_text()
    assert "Each policy minus flipcrop" in text and "| randaugment-1-5 |" in text
    assert text.startswith("# Image-to-image policies") and "| randaugment-1-5 | 2 |" in text
    assert "- command: `python -m das.train " in text and "randaugment:1,5 --seeds 0,1" in text


def test_policy_run_resumes_as_if_uninterrupted(tmp_path, monkeypatch):
    """kornia draws from torch's global generator, which the checkpoint restores."""
    args = [*TINY_DATA, "--policy", "randaugment:2,9", "--epochs", "2", "--limit-train", "16"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train.main([*args, "--out", str(full)]) == 0
    original, calls = train.Trainer.evaluate, {"n": 0}

    def dying_evaluate(self):
        calls["n"] += 1
        if calls["n"] == 2:  # after epoch 1's checkpoint
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(train.Trainer, "evaluate", dying_evaluate)
    assert train.main([*args, "--out", str(cut)]) == 130
    monkeypatch.setattr(train.Trainer, "evaluate", original)
    assert train.main(["--resume", "--out", str(cut), "--no-progress"]) == 0
    a = torch.load(full / "checkpoint.pt", weights_only=False)["network"]
    b = torch.load(cut / "checkpoint.pt", weights_only=False)["network"]
    assert a.keys() == b.keys() and not any(k.startswith("cell.") for k in a)  # no policy state
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_policy_checkpoint_evaluates_without_its_policy_file(tmp_path):
    path = _genotype(tmp_path)
    run = tmp_path / "run"
    argv = [*TINY_DATA, "--policy", f"das:{path}", "--epochs", "1", "--max-steps", "2"]
    assert train.main([*argv, "--out", str(run)]) == 0
    val = json.loads((run / "result.json").read_text())["val_acc"]
    path.unlink()  # evaluation builds the plain 2D network: the policy does not act there
    assert evaluate.main([str(run / "checkpoint.pt")]) == 0
    assert json.loads((run / "eval.json").read_text())["val_acc"] == val


def test_policy_modules_follow_the_network():
    policy = build_policy(parse_policy("flipcrop"), MEAN, STD)
    assert policy.source is None and list(policy.state_dict()) == []
    g = Genotype(("scale",), nodes=1, frames=2, mode="centered")
    frames = DiscreteCell(g, 1.0, MEAN, STD)
    from das.policy import PolicyAugment

    policy = PolicyAugment(frames, MEAN, STD, in_pixels=False, source=frames).double().eval()
    assert frames.theta.dtype == torch.float64 and not frames.training
    assert list(policy.state_dict()) == [] and list(policy.parameters()) == []


@pytest.mark.parametrize("group, calls", [(1, [1] * 6), (4, [4, 2])])
def test_kornia_draws_its_ops_per_image(group, calls, monkeypatch):
    """kornia draws a policy's ops once per call for its whole batch; the papers per image."""
    import kornia.augmentation.auto as auto

    seen, forward = [], auto.TrivialAugment.forward

    def counting(self, x, *args, **kwargs):
        seen.append(len(x))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(auto.TrivialAugment, "forward", counting)
    policy = build_policy(parse_policy("trivialaugment"), MEAN, STD, group=group).train()
    assert policy(torch.randn(6, 3, 8, 8)).shape == (6, 1, 3, 8, 8) and seen == calls


def test_flipcrop_trains_exactly_the_plain_baseline(tmp_path):
    args = [*TINY_DATA, "--epochs", "1", "--max-steps", "2"]
    assert train.main([*args, "--variant", "baseline", "--out", str(tmp_path / "b")]) == 0
    assert train.main([*args, "--policy", "flipcrop", "--out", str(tmp_path / "f")]) == 0
    a = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["network"]
    b = torch.load(tmp_path / "f" / "checkpoint.pt", weights_only=False)["network"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
