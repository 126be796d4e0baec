"""Build checks of the native extension.

* The CPU ops load (JIT build of csrc/ when no ahead-of-time build is installed).
* The JIT build never hangs: a stale torch lock is removed, a live holder gives a bounded wait
  naming the lock file, an interrupted build (killed mid-compile) is redone, and two checkouts
  build in folders of their own (a tiny library stands in where a full build would be slow).
* Every CUDA source compiles on its own, without torch (raw-pointer kernels and launchers;
  the torch wrapper is behind DAS_WITH_TORCH), whenever nvcc is on PATH, GPU or not.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CUDA_SOURCES = sorted((CSRC / "cuda").glob("*.cu"))


def test_cpu_extension_loads():
    from das_kernels import _native

    assert _native.load_error() is None, _native.load_error()


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_without_torch(source: Path, tmp_path: Path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    cmd = [
        nvcc,
        "-c",
        "-std=c++17",
        "-arch=sm_90",
        "-I",
        str(CSRC),
        str(source),
        "-o",
        str(tmp_path / f"{source.stem}.o"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    assert (tmp_path / f"{source.stem}.o").is_file()


# --- the JIT build lock: no run may hang on another's (interrupted) build ---------------------

ROOT = CSRC.parent
TINY_SOURCE = """#include <torch/library.h>
int64_t add_one(int64_t x) { return x + 1; }
TORCH_LIBRARY(das_tiny, m) { m.def("add_one(int x) -> int", add_one); }
"""
# Builds the tiny library of argv[1]/csrc with das_kernels' JIT path and calls its op.
TINY_CHILD = """
import sys
from pathlib import Path
import torch
from das_kernels import _native
tree = Path(sys.argv[1]) / "csrc"
flags = {"cxx": ["-O1"], "nvcc": [], "ldflags": [], "include": []}
name, directory = _native.build_location(tree, "cpu", flags)
_native.jit_build(name, sorted(tree.glob("*.cpp")), directory, flags)
print("result", torch.ops.das_tiny.add_one(41), directory)
"""
LOAD_CHILD = "from das_kernels import _native; print('reason', _native.load_error())"


def _checkout(path: Path) -> Path:
    (path / "csrc").mkdir(parents=True)
    (path / "csrc" / "tiny.cpp").write_text(TINY_SOURCE)
    return path


def _python(code: str, *args: str, env: dict | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tiny_build(checkout: Path, extensions: Path) -> Path:
    """Build the tiny library of `checkout` in a fresh process; its build folder."""
    done = _python(TINY_CHILD, str(checkout), env={"TORCH_EXTENSIONS_DIR": str(extensions)})
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("result"))
    assert line.split()[1] == "42", done.stdout
    return Path(line.split()[2])


def test_stale_torch_lock_is_removed(tmp_path: Path):
    from das_kernels import _native

    assert _native.load_error() is None, _native.load_error()
    name, directory = _native.jit_location()
    stale = directory / _native.TORCH_LOCK_NAME
    stale.touch()  # what an interrupted torch build leaves; torch alone would wait forever
    done = _python(LOAD_CHILD, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "reason None" in done.stdout, done.stdout + done.stderr
    assert not stale.exists()


def test_live_holder_gives_a_bounded_wait_and_names_the_lock():
    from das_kernels import _native

    assert _native.load_error() is None, _native.load_error()
    name, directory = _native.jit_location()
    with _native.build_lock(directory):
        done = _python(LOAD_CHILD, env={"DAS_KERNELS_BUILD_WAIT_S": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr
    reason = done.stdout
    assert str(directory / _native.LOCK_NAME) in reason, reason
    assert f"pid {os.getpid()}" in reason, reason
    assert "waiting for the native build" in done.stderr


def test_interrupted_build_is_redone(tmp_path: Path):
    checkout, extensions = _checkout(tmp_path / "tree"), tmp_path / "ext"
    child = subprocess.Popen(
        [sys.executable, "-c", TINY_CHILD, str(checkout)],
        cwd=ROOT,
        env={**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(extensions.rglob("build.ninja")):  # ninja starts the compile next
            assert child.poll() is None, "the build ended before it could be interrupted"
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the child, ninja and the compiler
        child.wait()
    (directory,) = {p.parent for p in extensions.rglob("build.ninja")}
    assert (directory / "BUILDING").exists() and not list(directory.glob("*.so"))
    assert _tiny_build(checkout, extensions) == directory
    assert not (directory / "BUILDING").exists()


def test_two_checkouts_build_apart_and_never_rebuild_each_other(tmp_path: Path):
    extensions = tmp_path / "ext"
    first, second = _checkout(tmp_path / "a"), _checkout(tmp_path / "b")
    first_dir = _tiny_build(first, extensions)
    (library,) = first_dir.glob("*.so")
    built = library.stat().st_mtime_ns
    second_dir = _tiny_build(second, extensions)
    assert second_dir != first_dir
    assert _tiny_build(first, extensions) == first_dir
    assert library.stat().st_mtime_ns == built  # loaded as built, not rebuilt
