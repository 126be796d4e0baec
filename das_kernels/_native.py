"""Loads the native ops (``torch.ops.das_native``): ahead-of-time build or JIT with ninja.

Order: the extension built by ``setup.py`` (``das_kernels._C``) if present, else a JIT
build of ``csrc/`` with ``torch.utils.cpp_extension.load`` (cached, rebuilt when a source
changes). CUDA sources are compiled only when torch has CUDA and nvcc is found.
``DAS_KERNELS_NO_JIT=1`` disables the JIT build. Failures are kept as reasons, never raised
at import.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import sys
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent.parent / "csrc"
NAMESPACE = "das_native"


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


def _source_hash() -> str:
    """Hash of every file under csrc/ (headers included: torch's JIT only hashes sources)."""
    digest = hashlib.sha1()
    for path in sorted(CSRC.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(CSRC).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _cuda_buildable() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


@functools.cache
def _load() -> tuple[str | None, bool]:
    """(reason it failed or None, whether CUDA kernels are in)."""
    if hasattr(torch.ops, NAMESPACE) and _registered():
        return None, _has_cuda_kernels()
    try:
        importlib.import_module("das_kernels._C")
        if _registered():
            return None, _has_cuda_kernels()
    except ImportError:
        pass
    if os.environ.get("DAS_KERNELS_NO_JIT") == "1":
        return "not built ahead of time and DAS_KERNELS_NO_JIT=1 disables the JIT build", False
    if not CSRC.is_dir():
        return f"C++ sources not found at {CSRC}", False
    with_cuda = _cuda_buildable()
    flags = compile_flags()
    try:
        from torch.utils.cpp_extension import load

        name = f"das_kernels_native_{'cuda' if with_cuda else 'cpu'}_{_source_hash()}"
        if not _jit_built(name):
            print("das_kernels: building native ops (first use; cached)...", file=sys.stderr)
        load(
            name=name,
            sources=[str(p) for p in sources(with_cuda)],
            extra_cflags=flags["cxx"],
            extra_cuda_cflags=flags["nvcc"],
            extra_ldflags=flags["ldflags"],
            extra_include_paths=flags["include"],
            is_python_module=False,
            verbose=os.environ.get("DAS_KERNELS_VERBOSE_BUILD") == "1",
        )
    except Exception as exc:  # compiler missing, build error, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"native build failed: {first}", False
    if not _registered():
        return "native library loaded but registered no das_native ops", False
    return None, with_cuda


def _jit_built(name: str) -> bool:
    """Whether torch's JIT cache already holds library `name` (no compile needed)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return (Path(_get_build_directory(name, False)) / f"{name}.so").is_file()
    except Exception:  # private torch API: assume a build
        return False


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
