"""pytest-benchmark entry point: ``pytest benchmarks/test_bench_search_step.py``.

One DAS search step (``bench_search_step.py``) on CPU at the ``--quick`` config (resnet_tiny,
B8, T4, 16x16), fused vs reference ops; and the script end to end writing its JSON.
"""

import json

import pytest
from bench_search_step import QUICK, main, make_searcher, search_argv, search_step

from das.runtime import ops_backend


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_search_step(benchmark, backend, tmp_path):
    searcher = make_searcher(search_argv(**QUICK, device="cpu", amp=False, order=1), backend, "")
    step = iter(range(1_000_000))

    def run():
        with ops_backend(backend):
            search_step(searcher, next(step))

    run()  # warm-up (native build / first-call work)
    benchmark.group = f"das search step {QUICK}"
    benchmark(run)


def test_script_writes_json(tmp_path):
    out = tmp_path / "step.json"
    argv = ["--quick", "--device", "cpu", "--steps", "1", "--profile", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    rows = {r["backend"]: r for r in result["rows"]}
    for r in rows.values():
        assert 0 < r["conv_share"] < 1 and 0 < r["batch_norm_share"] < 1
    ref = rows["reference"]
    assert result["speedup_bound"] == pytest.approx(
        1 / (ref["conv_share"] + ref["batch_norm_share"])
    )
    assert set(rows) == {"fused", "reference"}
    assert rows["fused"]["first_arch_loss"] == pytest.approx(rows["reference"]["first_arch_loss"])
    assert rows["fused"]["s_per_step"] > 0
