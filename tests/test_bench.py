"""python -m attnlib.bench: one run times every method against the plain network and writes JSON."""
from __future__ import annotations

import json

import pytest

from attnlib import bench


def test_cli_writes_rows_targets_and_loop_overhead(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--methods", "SE", "DynamicConv (K=4)", "--batch-size", "4", "--image-shape", "1,16,16",
                       "--steps", "1", "--repeats", "1", "--amp", "off", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    labels = [r["label"] for r in result["rows"]]
    assert labels == ["plain (BN)", "SE", "DynamicConv (K=4)"]
    se = result["rows"][1]
    assert se["target"] == 1.10 and se["meets_target"] == (se["train_step_ms_vs_first"] <= 1.10)
    assert result["rows"][0]["target"] is None and result["rows"][0]["train_step_ms_vs_first"] == 1.0
    assert result["rows"][2]["params"] > result["rows"][0]["params"]  # K experts per conv
    assert result["settings"]["dtype"] == "float32" and result["loop"]["fit_images_per_s"] > 0
    printed = capsys.readouterr().out
    assert "| SE |" in printed and "Training loop" in printed and str(out) in printed


def test_cli_refuses_an_unknown_method(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--methods", "CBAM"])
    assert "unknown methods ['CBAM']" in capsys.readouterr().err


def test_every_chapter_layer_is_benchmarked_with_its_target():
    assert {m.label: m.target for m in bench.METHODS} == {
        "IEBN": 1.10, "SE": 1.10, "BA": 1.15, "MABN + CenConv": 1.30, "NAM": 1.10, "DynamicConv (K=4)": 1.60}
