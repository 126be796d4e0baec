"""das_kernels.backends: the backend table, forced and automatic choices, the report."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

import das_kernels
from das_kernels import backends

# the module, not das_kernels.ops.gsf_gate (the function of that name)
gate_ops = importlib.import_module("das_kernels.ops.gsf_gate")

CPP_REASON = backends.unavailable_reason("cpp", "cpu")


def call_op(op: str) -> torch.Tensor:
    """Run the public op `op` on a tiny CPU input."""
    x = torch.randn(4, 8, 3, 3)
    gate = torch.tanh(torch.randn(4, 2, 3, 3))
    if op == "multi_affine_warp":
        return das_kernels.multi_affine_warp(x, torch.zeros(1, 2, 2, 3), torch.ones(1))
    if op == "temporal_shift":
        return das_kernels.temporal_shift(x, 2)
    if op == "gsf_pool":
        return das_kernels.gsf_pool(x, gate, 2)
    if op == "gsf_fuse":
        return das_kernels.gsf_fuse(x, gate, torch.rand(2, 2, 4, 2), 2)
    raise AssertionError(f"no tiny call for {op}")


def test_every_op_is_in_the_table():
    """Each registered op has a priority per device that ends in the reference, and the
    automatic choice on CPU is the C++ extension where it loads."""
    assert set(backends.OPS) == {"multi_affine_warp", "temporal_shift", "gsf_pool", "gsf_fuse"}
    for device_type, order in backends.PRIORITY.items():
        assert order[-1] == "reference", device_type
    for key, order in backends.OP_PRIORITY.items():
        assert order[-1] == "reference" and key in backends.PRIORITY_REASON, key
    for op in backends.OPS:
        assert backends.resolve("cpu", op) == ("reference" if CPP_REASON else "cpp")
        assert backends.unavailable_reason("reference", "cpu", op) is None
        assert "CUDA tensors" in backends.unavailable_reason("cuda", "cpu", op)


@pytest.mark.parametrize("op", ["multi_affine_warp", "temporal_shift", "gsf_pool", "gsf_fuse"])
def test_forced_backend_that_cannot_run_raises_with_the_reason(op, monkeypatch):
    monkeypatch.setenv("DAS_KERNELS_BACKEND", "cuda")
    with pytest.raises(backends.BackendUnavailable, match="'cuda' cannot run on cpu: .*CUDA"):
        call_op(op)
    monkeypatch.setenv("DAS_KERNELS_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(backends.BackendUnavailable, match="TRITON_INTERPRET=1"):
        call_op(op)
    monkeypatch.setenv("DAS_KERNELS_BACKEND", "reference")
    with backends.use("cuda"), pytest.raises(backends.BackendUnavailable, match="cuda"):
        call_op(op)  # use() takes precedence over the environment
    call_op(op)


def test_bad_backend_names_are_clear_errors(monkeypatch):
    monkeypatch.setenv("DAS_KERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="DAS_KERNELS_BACKEND='nonsense'"):
        backends.resolve("cpu", "temporal_shift")
    with pytest.raises(ValueError, match="unknown backend"):
        with backends.use("nonsense"):
            pass
    monkeypatch.setenv("DAS_KERNELS_BACKEND", "auto")
    assert backends.requested() is None


def test_automatic_choice_falls_back_with_one_warning(monkeypatch):
    """An automatic choice that skips a backend warns once per (device, backend, op) and
    names the reason; the op still runs (on the next backend)."""
    real = backends.unavailable_reason

    def cpp_broken(backend, device_type, op=None):
        return "broken for this test" if backend == "cpp" else real(backend, device_type, op)

    monkeypatch.setattr(backends, "unavailable_reason", cpp_broken)
    monkeypatch.setattr(backends, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert backends.resolve("cpu", "temporal_shift") == "reference"
            call_op("temporal_shift")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "temporal_shift" in messages[0]
    assert "cpp unavailable: broken for this test" in messages[0]


def test_helper_op_never_raises_and_follows_a_forced_reference():
    want = "reference" if backends.unavailable_reason("cpp", "cpu", "gsf_gate_taps") else "cpp"
    assert backends.resolve_helper("cpu", "gsf_gate_taps") == want
    for forced in ("triton", "cuda", "cpp"):  # backends it lacks or that cannot run: its order
        with backends.use(forced):
            assert backends.resolve_helper("cpu", "gsf_gate_taps") == want
    with backends.use("reference"):
        assert backends.resolve_helper("cpu", "gsf_gate_taps") == "reference"


def test_optional_kernel():
    kernel = "gsf_pool_backward_accumulate"
    assert backends.optional_kernel(kernel, "reference") is None
    if CPP_REASON is None:
        assert backends.optional_kernel(kernel, "cpp") is getattr(torch.ops.das_native, kernel)
    if backends.unavailable_reason("triton", "cpu") is None:
        from das_kernels.triton import gsf

        assert backends.optional_kernel(kernel, "triton") is gsf.gsf_pool_backward_accumulate


def test_gsf_gate_path(monkeypatch):
    """Per-device defaults, $DAS_KERNELS_GSF_GATE overrides, a clear error for bad values, a
    BackendUnavailable with the reason for triton where it cannot run."""
    assert tuple(gate_ops.GATE_PATHS) == backends.GSF_GATE_PATHS
    monkeypatch.delenv("DAS_KERNELS_GSF_GATE", raising=False)
    assert backends.gsf_gate_path("cpu") == "gemm"
    assert backends.gsf_gate_path("meta") == "conv"
    for path in ("gemm", "conv", "conv3d"):
        monkeypatch.setenv("DAS_KERNELS_GSF_GATE", path)
        assert backends.gsf_gate_path("cpu") == path
    monkeypatch.setenv("DAS_KERNELS_GSF_GATE", "cudnn")
    with pytest.raises(ValueError, match="DAS_KERNELS_GSF_GATE must be one of gemm, conv"):
        backends.gsf_gate_path("cpu")
    monkeypatch.setenv("DAS_KERNELS_GSF_GATE", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(backends.BackendUnavailable, match="GSF_GATE=triton cannot run on cpu"):
        backends.gsf_gate_path("cpu")


def test_report_lists_every_choice_with_reasons():
    report = das_kernels.backend_report()
    for op in backends.OPS:
        assert f"cpu {op}: runs " in report, op
    for helper, (_, why) in backends.HELPER_ORDER.items():
        assert f"cpu {helper} (helper): runs " in report and why in report
    for kernel, (op, _, without) in backends.OPTIONAL_KERNELS.items():
        assert f"cpu {kernel} (optional kernel of {op}'s backend" in report and without in report
    assert "cpu gsf_gate path: runs " in report
    assert backends.GSF_GATE_DEFAULT["cpu"][1] in report
    assert "$DAS_KERNELS_GSF_GATE=gemm|conv|conv3d|triton" in report
    for path in backends.GSF_GATE_PATHS:
        assert f"  {path:<10} " in report
    if torch.cuda.is_available():
        for why in backends.PRIORITY_REASON.values():
            assert why in report
    else:
        assert "cuda: no CUDA device" in report


def test_report_survives_a_bad_environment(monkeypatch):
    monkeypatch.setenv("DAS_KERNELS_GSF_GATE", "cudnn")
    assert "gsf_gate path: runs none (DAS_KERNELS_GSF_GATE must be" in backends.backend_report()
