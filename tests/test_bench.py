"""python -m attnlib.bench: one run times every method against the plain network and writes JSON."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from attnlib import bench
from attnlib.benchmark import machine_load, other_processes_share


def test_cli_writes_rows_targets_and_loop_overhead(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--methods", "SE", "DynamicConv (K=4)", "--batch-size", "4", "--image-shape", "1,16,16",
                       "--steps", "1", "--repeats", "1", "--amp", "off", "--device", "cpu", "--out", str(out),
                       "--epoch-times", "resnet20", "--epoch-images", "128"]) == 0
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
    assert "Machine load during the run: other processes took" in printed
    epoch = result["epoch_times"]["resnet20"]
    assert epoch["images"] == 128 and epoch["epoch_s"] == pytest.approx(128 / epoch["train_images_per_s"])
    assert "Epoch of resnet20 on 128 images:" in printed
    load = result["machine_load"]
    assert 0 <= load["other_processes_cpu_share"] <= 1 and load["quiet"] == (load["other_processes_cpu_share"] <= 0.1)


def test_cli_refuses_an_unknown_method_or_model(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--methods", "CBAM"])
    assert "unknown methods ['CBAM']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--epoch-times", "resnet19"])
    assert "--epoch-times: unknown models ['resnet19']" in capsys.readouterr().err


def test_other_processes_share_is_the_busy_time_not_ours_over_the_capacity():
    assert other_processes_share(busy=10.0, own=4.0, wall=5.0, cpus=2) == pytest.approx(0.6)
    assert other_processes_share(busy=3.0, own=4.0, wall=5.0, cpus=2) == 0.0  # clock granularity
    assert other_processes_share(busy=30.0, own=0.0, wall=5.0, cpus=2) == 1.0


def test_machine_load_sees_another_process_spinning():
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)  # let it start
        with machine_load() as load:
            time.sleep(2.0)  # this process is idle: the busy time is the spinner's (and anything else's)
    finally:
        spinner.kill()
        spinner.wait()
    cpus = load["cpus"]
    assert load["other_processes_cpu_share"] >= 0.8 / cpus and load["quiet"] is (cpus > 10)


@pytest.mark.parametrize("load, expected", [
    (None, "not recorded"),
    ({"other_processes_cpu_share": 0.02, "quiet": True, "cpus": 2, "load_average_start": 0.1,
      "load_average_end": 0.3}, re.escape("other processes took 2 % of the 2 CPUs' time (load average 0.1 at "
                                          "the start, 0.3 at the end): a quiet machine.")),
    ({"other_processes_cpu_share": 0.55, "quiet": False, "cpus": 2, "load_average_start": 2.0,
      "load_average_end": 2.1}, "took 55 % .*\\*\\*under load\\*\\*"),
])
def test_the_page_says_under_what_load_a_run_was_taken(load, expected):
    assert re.search(expected, bench.load_line({"machine_load": load}))
