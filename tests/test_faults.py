"""Fault injection: the promises of das/README.md (outputs and resume) under SIGKILL at
chosen points, Ctrl-C, truncated or corrupt checkpoints, a full disk, two runs into one
--out, a rank that dies or hangs, and bad command-line input.

The kills are deterministic, never timing-dependent: ``DAS_FAULT_AT=<point>:<n>`` makes the
process signal itself at that point (``das.runtime.fault_point``). Every run is a separate
``python -m das.<command>`` process on one thread (seconds each).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from das_testing import FAST_FUSION, TINY_DATA

from das import evaluate, search, train
from das.cell import Genotype
from das.runtime import fault_point

REPO = Path(__file__).resolve().parents[1]
SEARCH = [*TINY_DATA, "--fusion", FAST_FUSION, "--frames", "2", "--nodes", "2"]
SEARCH += ["--epochs", "2", "--steps-per-epoch", "3"]
TRAIN = [*TINY_DATA, "--fusion", FAST_FUSION, "--epochs", "2"]  # 6 steps per epoch
TIMING = {"sec_per_step", "sec_arch_step", "sec_weight_step", "epoch_sec", "train_seconds"}
WAIT_S = 300  # a generous bound for one tiny run (never asserted as a duration)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAS_FAULT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("WORLD_SIZE", None)
    return {**env, **extra}


def _run(command: str, args: list[str], **fault: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"das.{command}", *args],
        cwd=REPO,
        env=_env(**fault),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _killed(proc: subprocess.CompletedProcess, point: str) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
    assert f"DAS_FAULT_AT={point}" in proc.stderr


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _json(path: Path):
    return json.loads(path.read_text())


def _tensors_equal(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for name, value in a.items():
        assert torch.equal(value, b[name]), f"{where}.{name}"


def _final_line(out: Path) -> str:
    (line,) = [x for x in (out / "report.md").read_text().splitlines() if "after selection" in x]
    return line


def _same_search(a: Path, b: Path) -> None:
    """Genotype, selection (accuracies and losses), per-epoch log, final metrics and the
    final supernet: bit for bit."""
    assert (a / "genotype.json").read_text() == (b / "genotype.json").read_text()
    assert _json(a / "selection.json") == _json(b / "selection.json")
    assert _strip(_json(a / "search_log.json")) == _strip(_json(b / "search_log.json"))
    assert _final_line(a) == _final_line(b)
    ca = torch.load(a / "checkpoint.pt", weights_only=False)
    cb = torch.load(b / "checkpoint.pt", weights_only=False)
    assert ca["stage"] == cb["stage"] == "done"
    for key in ("cell", "backbone"):
        _tensors_equal(ca[key], cb[key], key)
    assert not list(b.glob("*.tmp"))


def _same_train(a: Path, b: Path) -> None:
    ra, rb = _json(a / "result.json"), _json(b / "result.json")
    assert {k: v for k, v in ra.items() if k not in TIMING} == {
        k: v for k, v in rb.items() if k not in TIMING
    }
    assert _strip(_json(a / "train_log.json")) == _strip(_json(b / "train_log.json"))
    ca = torch.load(a / "checkpoint.pt", weights_only=False)
    cb = torch.load(b / "checkpoint.pt", weights_only=False)
    _tensors_equal(ca["network"], cb["network"], "network")
    assert not list(b.glob("*.tmp"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def search_ref(work):
    out = work / "search_ref"
    _ok(_run("search", [*SEARCH, "--out", str(out)]))
    return out


@pytest.fixture(scope="module")
def genotype(work):
    path = work / "genotype.json"
    ops = ("translate_x", "rotate", "scale", "identity", "translate_y", "rotate")
    Genotype(ops, nodes=3, frames=2).save(path)
    return path


@pytest.fixture(scope="module")
def train_ref(work, genotype):
    out = work / "train_ref"
    _ok(_run("train", [*TRAIN, "--genotype", str(genotype), "--out", str(out)]))
    return out


@pytest.fixture(scope="module")
def search_mid_selection(work):
    """A search SIGKILLed during selection (evaluation 4 of edge 1): checkpoint.pt is
    epoch 2's, checkpoint.prev.pt epoch 1's. A copy for each test that uses it."""
    out = work / "mid_selection"
    _killed(_run("search", [*SEARCH, "--out", str(out)], DAS_FAULT_AT="select:4"), "select:4")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 2
    assert torch.load(out / "checkpoint.prev.pt", weights_only=False)["epoch"] == 1
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- SIGKILL + resume


def test_search_killed_at_each_point_resumes_bit_for_bit(search_ref, work):
    """SIGKILL during an epoch (step 4 of 6: epoch 2), during selection, halfway through a
    checkpoint write and between the checkpoint's two renames; each time --resume; the end
    is the uninterrupted run, bit for bit."""
    out = work / "search_chain"
    args = [*SEARCH, "--out", str(out)]
    _killed(_run("search", args, DAS_FAULT_AT="step:4"), "step:4")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["stage"] == "search" and ckpt["epoch"] == 1
    resume = [*args, "--resume"]
    _killed(_run("search", resume, DAS_FAULT_AT="select:3"), "select:3")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["records"] == []
    # the 2nd checkpoint of this process: after the 2nd selected edge (the 1st is skipped)
    _killed(_run("search", resume, DAS_FAULT_AT="checkpoint-write:2"), "checkpoint-write:2")
    assert (out / "checkpoint.pt.tmp").is_file()  # the torn temp file, never read
    assert len(torch.load(out / "checkpoint.pt", weights_only=False)["records"]) == 1
    _killed(_run("search", resume, DAS_FAULT_AT="checkpoint-rotate:1"), "checkpoint-rotate:1")
    assert not (out / "checkpoint.pt").exists()  # killed between the renames
    proc = _run("search", resume)
    _ok(proc)
    assert "resuming from the previous checkpoint" in proc.stderr
    _same_search(search_ref, out)


def test_train_killed_resumes_bit_for_bit(train_ref, genotype, work):
    """SIGKILL in epoch 2, halfway through epoch 2's checkpoint, between its renames;
    --resume (at last with nothing but --out) ends like the uninterrupted run."""
    out = work / "train_chain"
    args = [*TRAIN, "--genotype", str(genotype), "--out", str(out)]
    _killed(_run("train", args, DAS_FAULT_AT="step:8"), "step:8")  # in epoch 2
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 6
    _killed(
        _run("train", [*args, "--resume"], DAS_FAULT_AT="checkpoint-write:1"), "checkpoint-write:1"
    )
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 6
    _killed(
        _run("train", [*args, "--resume"], DAS_FAULT_AT="checkpoint-rotate:1"),
        "checkpoint-rotate:1",
    )
    assert not (out / "checkpoint.pt").exists()
    # the genotype, like everything else, comes from the (previous) checkpoint; --threads
    # does not (a runtime setting), and a different thread count changes the float sums
    proc = _run("train", ["--out", str(out), "--resume", "--no-progress", "--threads", "1"])
    _ok(proc)
    assert "resuming from the previous checkpoint" in proc.stderr
    _same_train(train_ref, out)


# ----------------------------------------------------------------------------- Ctrl-C


def test_sigint_keeps_the_checkpoint_says_how_to_resume(search_ref, work):
    """Ctrl-C (SIGINT from the hook, in epoch 2): exit 130, the epoch-1 checkpoint kept,
    the resume command printed; running it finishes like the uninterrupted run."""
    out = work / "sigint"
    args = [*SEARCH, "--out", str(out)]
    proc = _run("search", args, DAS_FAULT_AT="step:4", DAS_FAULT_SIGNAL="INT")
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"the last complete checkpoint is {out / 'checkpoint.pt'}" in proc.stderr
    hint = proc.stderr.strip().splitlines()[-1].split()
    assert hint[:3] == ["python", "-m", "das.search"] and hint[-1] == "--resume"
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not list(out.glob("*.tmp"))
    _ok(_run("search", hint[3:]))
    _same_search(search_ref, out)


def test_real_sigint_stops_a_running_search(work):
    """A SIGINT from outside, once the run has written its first checkpoint: it stops
    (bounded wait), exit 130, the checkpoint readable."""
    out = work / "sigint_real"
    args = [*SEARCH, "--epochs", "1000", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "das.search", *args],
        cwd=REPO,
        env=_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stderr:
            if line.startswith("epoch 1/"):
                break
        deadline = time.monotonic() + WAIT_S
        while not (out / "checkpoint.pt").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "--resume" in err
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] >= 1


# ----------------------------------------------------------------------------- corrupt checkpoints


def test_truncated_checkpoint_falls_back_to_the_previous_one(
    search_mid_selection, search_ref, work
):
    """checkpoint.pt truncated: --resume warns, takes checkpoint.prev.pt (epoch 1), sets the
    torn file aside, and ends like the uninterrupted run."""
    out = _copy(search_mid_selection, work / "fallback")
    _truncate(out / "checkpoint.pt")
    proc = _run("search", [*SEARCH, "--out", str(out), "--resume"])
    _ok(proc)
    assert f"{out / 'checkpoint.pt'} (truncated or corrupt?)" in proc.stderr
    assert f"resuming from the previous checkpoint {out / 'checkpoint.prev.pt'}" in proc.stderr
    assert (out / "checkpoint.pt.corrupt").is_file()
    _same_search(search_ref, out)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "bitflip"])
def test_unreadable_checkpoints_exit_2_naming_both(search_mid_selection, work, damage, capsys):
    out = _copy(search_mid_selection, work / f"both_{damage}")
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        path = out / name
        if damage == "truncate":
            _truncate(path)
        elif damage == "bitflip":  # one byte in the middle: in a tensor's data
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x10
            path.write_bytes(bytes(data))
        else:
            path.write_bytes(b"" if damage == "empty" else os.urandom(4096))
    with pytest.raises(SystemExit) as exc:
        search.main(["--out", str(out), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert str(out / "checkpoint.pt") in err and str(out / "checkpoint.prev.pt") in err
    assert "no readable checkpoint" in err


def test_truncated_train_checkpoint_exits_2(train_ref, work, capsys):
    out = work / "train_trunc"
    out.mkdir()
    shutil.copy(train_ref / "checkpoint.pt", out / "checkpoint.pt")
    _truncate(out / "checkpoint.pt")
    with pytest.raises(SystemExit) as exc:
        train.main(["--out", str(out), "--resume", "--variant", "baseline", "--no-progress"])
    assert exc.value.code == 2 and str(out / "checkpoint.pt") in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        evaluate.main([str(out / "checkpoint.pt")])
    assert exc.value.code == 2 and str(out / "checkpoint.pt") in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        train.main(["--out", str(out), "--eval-only"])
    assert exc.value.code == 2 and str(out / "checkpoint.pt") in capsys.readouterr().err


# ----------------------------------------------------------------------------- full disk


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs mount point (root only; skipped with the reason otherwise); unmounted after."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux mount(8) for a small tmpfs")
    probe = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip() or probe.returncode}")

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    try:
        yield mnt, resize
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_keeps_the_previous_checkpoint(small_tmpfs, search_ref):
    """--out on a tmpfs with room for one checkpoint and a half: the second checkpoint
    cannot be written; exit 1 and one line naming the file; checkpoint.pt (epoch 1) intact,
    no temp file; with room again, --resume ends like the uninterrupted run."""
    mnt, resize = small_tmpfs
    size = (search_ref / "checkpoint.pt").stat().st_size
    resize(size * 3 // 2 + 64 * 1024)
    out = mnt / "run"
    proc = _run("search", [*SEARCH, "--out", str(out)])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"cannot write {out / 'checkpoint.pt'}: No space left on device" in proc.stderr
    assert "the previous checkpoint.pt is intact" in proc.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not list(out.glob("*.tmp"))
    resize(size * 4 + 4 * 1024 * 1024)
    _ok(_run("search", [*SEARCH, "--out", str(out), "--resume"]))
    _same_search(search_ref, out)


# ----------------------------------------------------------------------------- out-dir lock


def _wait_stopped(proc: subprocess.Popen) -> None:
    """Until `proc` is stopped (state T in /proc; bounded wait)."""
    deadline = time.monotonic() + WAIT_S
    stat = Path(f"/proc/{proc.pid}/stat")
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended instead of stopping"
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.05)
    raise AssertionError("the run did not reach its fault point")


def test_second_run_into_the_same_out_refuses(search_ref, work):
    """A live run (stopped at step 1) holds OUT/.lock: a second run exits 2 naming it;
    once the first is SIGKILLed the lock is gone and --resume completes."""
    out = work / "locked"
    args = [*SEARCH, "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "das.search", *args],
        cwd=REPO,
        env=_env(DAS_FAULT_AT="step:1", DAS_FAULT_SIGNAL="STOP"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_stopped(first)
        second = _run("search", [*args, "--resume"])
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"--out {out} is in use by another das run (pid {first.pid}" in second.stderr
        second = _run("train", [*TRAIN, "--variant", "baseline", "--out", str(out)])
        assert second.returncode == 2 and "is in use by another das run" in second.stderr
    finally:
        first.kill()
        first.wait()
    _ok(_run("search", [*args, "--resume"]))
    _same_search(search_ref, out)


# ----------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "victim, signal_name",
    [(1, "KILL"), (0, "KILL"), (1, "STOP")],
    ids=["rank1-dies", "rank0-dies", "rank1-hangs"],
)
def test_a_dead_or_hung_rank_stops_the_others(work, victim, signal_name):
    """Two gloo processes (as torchrun starts them); rank `victim` is SIGKILLed (or
    stopped) at step 4: the other exits 1 within the collective timeout (a bounded wait),
    naming itself and the lost rank."""
    out = work / f"ddp_{victim}_{signal_name}"
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(
            WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            DAS_DIST_TIMEOUT_S="20",
            DAS_FAULT_AT="step:4",
            DAS_FAULT_RANK=str(victim),
            DAS_FAULT_SIGNAL=signal_name,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "das.search", *SEARCH, "--out", str(out)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    survivor = procs[1 - victim]
    try:
        _, err = survivor.communicate(timeout=WAIT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert survivor.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    assert f"rank {1 - victim} of 2: a collective operation failed: rank {victim}" in err
    if victim == 1:  # rank 0 had written epoch 1's checkpoint: resumable alone
        assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1


# ----------------------------------------------------------------------------- bad input


def _npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(path, x_train=x, y_train=y, x_val=x, y_val=y)
    return path


@pytest.mark.parametrize("case", ["zero-images", "nan-images", "labels-100-109"])
def test_bad_npz_exits_2_naming_the_file(tmp_path, case, capsys):
    rng = np.random.default_rng(0)
    if case == "zero-images":
        x, y = np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, np.int64)
    elif case == "nan-images":
        x, y = np.full((20, 8, 8, 3), np.nan, np.float32), np.arange(20) % 2
    else:
        x, y = rng.integers(0, 255, (20, 8, 8, 3)).astype(np.uint8), 100 + np.arange(20) % 10
    data = _npz(tmp_path / f"{case}.npz", x, y)
    with pytest.raises(SystemExit) as exc:
        search.main([*SEARCH, "--data", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"--data: {data}" in err and "Traceback" not in err


def test_out_naming_a_file_exits_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for main, extra in ((search.main, SEARCH), (train.main, [*TRAIN, "--variant", "baseline"])):
        with pytest.raises(SystemExit) as exc:
            main([*extra, "--out", str(afile)])
        assert exc.value.code == 2
        assert f"--out: {afile} exists and is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_genotype_with_a_non_finite_magnitude_exits_2(tmp_path, value, capsys):
    g = Genotype(("translate_x", "rotate", "scale"), nodes=2, frames=2).to_dict()
    g["magnitudes"][1] = value
    path = tmp_path / "g.json"
    path.write_text(json.dumps(g))  # NaN / Infinity, as json writes them
    with pytest.raises(SystemExit) as exc:
        train.main([*TRAIN, "--genotype", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--genotype" in err and "finite" in err


def test_fault_point_is_inert_unless_named(monkeypatch):
    monkeypatch.delenv("DAS_FAULT_AT", raising=False)
    fault_point("step", 0)
    monkeypatch.setenv("DAS_FAULT_AT", "step:5")
    fault_point("step", 4)
    fault_point("select")
    monkeypatch.setenv("DAS_FAULT_RANK", "1")
    fault_point("step", 5)  # another rank's fault (RANK unset = rank 0)


def test_full_disk_while_writing_the_report_exits_1(tmp_path, monkeypatch, capsys):
    """ENOSPC from any write of the run (here the report): exit 1, one line naming the file."""

    def no_room(searcher, result):
        raise OSError(28, "No space left on device", str(searcher.out / "tau.png"))

    monkeypatch.setattr(search, "write_search_report", no_room)
    out = tmp_path / "s"
    assert search.main([*SEARCH, "--epochs", "1", "--select", "argmax", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: cannot write {out / 'tau.png'}: No space left on device" in err
    assert "Traceback" not in err
    assert torch.load(out / "checkpoint.pt", weights_only=False)["stage"] == "done"
