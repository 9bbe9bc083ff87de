"""Smoke test of the text speed benchmark (benchmarks/text_speed.py): well-formed outputs, no timing."""
import math
import subprocess

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks.text_speed import LXT_PYTHON, LocalWorker, ProcessWorker, measure_cell, save_weights
from benchmarks.text_speed_report import markdown
from benchmarks.text_speed_worker import peak_bytes

LENGTH = 16


def _rows(model: str, tmp_path) -> dict:
    weights = save_weights(model, "tiny", tmp_path)
    workers = {m: LocalWorker(m) for m in ("plain", "libra_eager")}
    return {r["method"]: r for r in measure_cell(workers, model, LENGTH, reps=1, weights=weights)}


def _well_formed(row: dict) -> None:
    assert "error" not in row, row.get("error")
    assert len(row["times"]) == 1 and row["median_s"] > 0
    assert isinstance(row["peak_bytes"], int) and row["peak_bytes"] > 0
    check = row["check"]
    assert check["finite"] and check["shape"] == [LENGTH]
    assert math.isfinite(check["conservation"])


def test_plain_and_libra_rows_are_well_formed_and_libra_is_complete(tmp_path):
    rows = _rows("bert", tmp_path)
    for row in rows.values():
        _well_formed(row)
    libra = rows["libra_eager"]["check"]
    assert libra["score_vs_plain"] == 0.0  # the balanced module's forward is the model's
    assert libra["fullgrad_ce"] < 1e-5
    # bias terms are random, so inputs alone do not add up to the logit: FullGrad's bias part does
    assert abs(libra["bias_sum"]) > 1e-4
    text = markdown({"rows": list(rows.values()), "notes": [], "wall_s": 1.0,
                     "machine": {"platform": "test", "cpus": 1, "threads": 1, "device": "cpu",
                                 "dtype": "float32", "torch": torch.__version__, "loadavg_start": [0.0]}})
    assert "#### bert" in text and "libra_fx eager" in text


def test_libra_is_complete_on_llama(tmp_path):
    check = _rows("llama", tmp_path)["libra_eager"]["check"]
    assert check["fullgrad_ce"] < 1e-5


def test_peak_bytes_sees_a_temporary_allocation():
    assert peak_bytes(lambda: torch.ones(1024, 1024).sum(), torch.device("cpu")) >= 4 * 1024 * 1024


def _lxt_python():
    if not LXT_PYTHON.exists():
        pytest.skip(f"lxt not importable: no lxt environment at {LXT_PYTHON} (bash benchmarks/lxt_env.sh)")
    probe = subprocess.run([str(LXT_PYTHON), "-c", "import lxt.efficient"], capture_output=True)
    if probe.returncode:
        pytest.skip("lxt not importable in its environment")
    return LXT_PYTHON


@pytest.mark.slow
def test_lxt_cp_lrp_conserves_on_the_same_llama(tmp_path):
    python = _lxt_python()
    weights = save_weights("llama", "tiny", tmp_path)
    workers = {"plain": LocalWorker("plain"),
               "lxt_cplrp": ProcessWorker(python, "lxt_cplrp", tmp_path / "lxt.log")}
    try:
        rows = {r["method"]: r for r in measure_cell(workers, "llama", LENGTH, reps=1, weights=weights)}
    finally:
        workers["lxt_cplrp"].close()
    _well_formed(rows["lxt_cplrp"])
    check = rows["lxt_cplrp"]["check"]
    assert rows["lxt_cplrp"]["weight_problems"] == []
    assert check["score_vs_plain"] < 1e-5  # the same model across transformers 5.x and 4.52
    # Llama has no biases: detached q/k, norm scale and gate make it linear, so relevance sums to the logit
    assert abs(check["conservation"] - 1) < 1e-4
