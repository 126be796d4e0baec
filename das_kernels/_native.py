"""Loads the native ops (``torch.ops.das_native``): ahead-of-time build or JIT with ninja.

Order: the extension built by ``setup.py`` (``das_kernels._C``) if present, else a JIT
build of ``csrc/`` with ``torch.utils.cpp_extension.load``. CUDA sources are compiled only
when torch has CUDA and nvcc is found. ``DAS_KERNELS_NO_JIT=1`` disables the JIT build.
Failures are kept as reasons, never raised at import.

The JIT build lives in ``<torch extensions root>/das_kernels/<checkout>/<name>``: one folder
per checkout (the absolute path of its ``csrc/``) and source state (the content of every
file under ``csrc/``, the flags, torch and Python versions), so two checkouts never rebuild
each other. Builds are serialised by an ``flock`` on ``das_build.lock`` in that folder: the
kernel drops it when its holder dies, so a killed build never blocks later runs; the wait
for a live holder is bounded (``DAS_KERNELS_BUILD_WAIT_S``, default 900 s) and ends in a
reason naming the lock file. A build that was interrupted (its ``BUILDING`` marker is still
there) is wiped and redone; torch's own ``lock`` file left by it is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent.parent / "csrc"
NAMESPACE = "das_native"
LOCK_NAME = "das_build.lock"
MARKER_NAME = "BUILDING"  # present while a build runs; left behind by an interrupted one
TORCH_LOCK_NAME = "lock"  # torch.utils.file_baton's lock, which waits forever when stale
DEFAULT_WAIT_S = 900.0


class BuildLockTimeout(RuntimeError):
    """Another live process held the build lock for longer than the allowed wait."""


def sources(with_cuda: bool) -> list[Path]:
    """The C++ (and CUDA) sources of the extension."""
    files = [CSRC / "das_kernels.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]
    if with_cuda:
        files += sorted((CSRC / "cuda").glob("*.cu"))
    return files


def compile_flags() -> dict[str, list[str]]:
    """Flags shared by the JIT and the setup.py build."""
    return {
        "cxx": ["-O3", "-fopenmp", "-DDAS_WITH_TORCH"],
        "nvcc": ["-O3", "--use_fast_math", "-DDAS_WITH_TORCH", "-lineinfo"],
        "ldflags": ["-fopenmp"],
        "include": [str(CSRC)],
    }


def _digest(*parts: str | bytes, n: int = 10) -> str:
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:n]


def _tree_state(root: Path) -> list[str | bytes]:
    """Every file under `root` (headers included: torch's JIT only hashes sources)."""
    state: list[str | bytes] = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            state += [path.relative_to(root).as_posix(), path.read_bytes()]
    return state


def build_root() -> Path:
    """Where every das_kernels JIT build lives: ``$TORCH_EXTENSIONS_DIR`` or torch's default."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "das_kernels"


def build_location(tree: Path, kind: str, flags: dict[str, list[str]]) -> tuple[str, Path]:
    """(library name, build folder) for the sources under `tree` as they are now."""
    state = _digest(
        *_tree_state(tree), kind, repr(sorted(flags.items())), torch.__version__, sys.version
    )
    name = f"das_kernels_native_{kind}_{state}"
    checkout = tree.resolve()
    return name, build_root() / f"{checkout.parent.name}-{_digest(str(checkout), n=8)}" / name


def _lock_holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        return "an unknown process"
    return f"pid {text}" if text else "an unknown process"


@contextlib.contextmanager
def build_lock(directory: Path, wait_s: float | None = None, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the exclusive build lock of `directory`; waits at most `wait_s` for a live holder."""
    if wait_s is None:
        wait_s = float(os.environ.get("DAS_KERNELS_BUILD_WAIT_S", DEFAULT_WAIT_S))
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                holder = _lock_holder(lock_path)
                if waited >= wait_s:
                    raise BuildLockTimeout(
                        f"the native build lock {lock_path} is held by {holder}, still "
                        f"building after {waited:.0f} s; wait for it, or stop it and retry "
                        f"(DAS_KERNELS_BUILD_WAIT_S sets how long to wait)"
                    ) from None
                if not told:
                    print(
                        f"das_kernels: waiting for the native build of {holder} "
                        f"(lock {lock_path}, at most {wait_s:.0f} s)...",
                        file=sys.stderr,
                    )
                    told = True
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # releases the flock


def _clear_interrupted(directory: Path) -> None:
    """Under the lock: undo what an interrupted build left (stale torch lock, partial outputs)."""
    if (directory / MARKER_NAME).exists():
        print(f"das_kernels: redoing an interrupted native build in {directory}", file=sys.stderr)
        for entry in directory.iterdir():
            if entry.name == LOCK_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    (directory / TORCH_LOCK_NAME).unlink(missing_ok=True)


def _prune_siblings(directory: Path) -> None:
    """Remove this checkout's builds of older source states that no process is using."""
    for sibling in directory.parent.iterdir():
        if sibling == directory or not sibling.is_dir():
            continue
        lock_path = sibling / LOCK_NAME
        if not lock_path.exists():
            continue
        fd = os.open(lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            shutil.rmtree(sibling, ignore_errors=True)
        finally:
            os.close(fd)


def is_built(name: str, directory: Path) -> bool:
    """Whether `directory` holds a complete build of library `name`."""
    return (directory / f"{name}.so").is_file() and not (directory / MARKER_NAME).exists()


def jit_build(
    name: str,
    source_files: list[Path],
    directory: Path,
    flags: dict[str, list[str]],
    verbose: bool = False,
    wait_s: float | None = None,
) -> None:
    """Build (if needed) and load library `name` from `source_files` into `directory`."""
    from torch.utils.cpp_extension import load

    with build_lock(directory, wait_s):
        _clear_interrupted(directory)
        if not is_built(name, directory):
            print("das_kernels: building native ops (first use; cached)...", file=sys.stderr)
        (directory / MARKER_NAME).touch()
        load(
            name=name,
            sources=[str(p) for p in source_files],
            extra_cflags=flags["cxx"],
            extra_cuda_cflags=flags["nvcc"],
            extra_ldflags=flags["ldflags"],
            extra_include_paths=flags["include"],
            build_directory=str(directory),
            is_python_module=False,
            verbose=verbose,
        )
        (directory / MARKER_NAME).unlink()
        _prune_siblings(directory)


def _cuda_buildable() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


@functools.cache
def jit_location() -> tuple[str, Path]:
    """(library name, build folder) of this checkout's JIT build of csrc/ as it is now."""
    kind = "cuda" if _cuda_buildable() else "cpu"
    return build_location(CSRC, kind, compile_flags())


def _aot_loaded() -> bool:
    try:
        importlib.import_module("das_kernels._C")
    except ImportError:
        return False
    return _registered()


@functools.cache
def _load() -> tuple[str | None, bool]:
    """(reason it failed or None, whether CUDA kernels are in)."""
    if hasattr(torch.ops, NAMESPACE) and _registered():
        return None, _has_cuda_kernels()
    if _aot_loaded():
        return None, _has_cuda_kernels()
    if os.environ.get("DAS_KERNELS_NO_JIT") == "1":
        return "not built ahead of time and DAS_KERNELS_NO_JIT=1 disables the JIT build", False
    if not CSRC.is_dir():
        return f"C++ sources not found at {CSRC}", False
    with_cuda = _cuda_buildable()
    try:
        name, directory = jit_location()
        jit_build(
            name,
            sources(with_cuda),
            directory,
            compile_flags(),
            verbose=os.environ.get("DAS_KERNELS_VERBOSE_BUILD") == "1",
        )
    except BuildLockTimeout as exc:
        return f"native build not available: {exc}", False
    except Exception as exc:  # compiler missing, build error, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"native build failed: {first}", False
    if not _registered():
        return "native library loaded but registered no das_native ops", False
    return None, with_cuda


def _registered() -> bool:
    try:
        torch.ops.das_native.multi_affine_warp_forward  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def _has_cuda_kernels() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(
        "das_native::multi_affine_warp_forward", "CUDA"
    )


def load_error() -> str | None:
    """None when the native ops are loaded (building them if needed), else why not."""
    return _load()[0]


def cuda_error() -> str | None:
    """None when the native ops include CUDA kernels, else why not."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if not _load()[1]:
        return "the native extension was built without CUDA (needs a CUDA torch and nvcc)"
    return None


def build_report() -> str:
    """One line: where the native build lives and whether it is current (builds nothing)."""
    if importlib.util.find_spec("das_kernels._C") is not None:
        return "native build: ahead of time (das_kernels._C)"
    if not CSRC.is_dir():
        return f"native build: none (C++ sources not found at {CSRC})"
    name, directory = jit_location()
    if is_built(name, directory):
        state = "current"
    elif (directory / MARKER_NAME).exists():
        state = "interrupted; redone on next use"
    else:
        state = "not built for these sources yet; built on first use"
    return f"native build: {directory} ({state})"
