"""attnlib.pool and python -m attnlib.run's queue: claims, several workers, stop and resume."""
from __future__ import annotations

import functools
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnlib.chapters import experiments
from attnlib.experiment import BOOK_RECIPE, compare
from attnlib.pool import Job, claim, footing_kind, make_jobs, queue_status
from attnlib.profiles import resolve_profile
from attnlib.run import main as run_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import records_archive  # noqa: E402
import restore_checkpoints  # noqa: E402

SMOKE = resolve_profile("smoke", epochs=1, seeds=(0, 1))


def _jobs(data=None, setup=SMOKE) -> list[Job]:
    return make_jobs(list(experiments("00", setup).values()), setup, BOOK_RECIPE, data or setup.load())


def test_a_run_shared_by_two_comparisons_is_one_job():
    setup = resolve_profile("smoke", epochs=1, seeds=(0, 1))
    exps = [experiments("01", setup)["main"], experiments("00", setup)["main"]]  # BN (01) is ResNet-20 (00)
    jobs = make_jobs(exps, setup, BOOK_RECIPE, setup.load())
    labels = [j.variant.label for j in jobs]
    assert labels == ["BN", "IEBN", "BN", "IEBN", "AlexNet", "AlexNet"]  # seed by seed; ResNet-20 = BN
    assert len({(j.key, j.seed) for j in jobs}) == len(jobs)


def test_a_claim_is_exclusive_and_freed_when_its_process_dies(tmp_path):
    job = _jobs()[0]
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_pool import _jobs
from attnlib.pool import claim
from pathlib import Path
with claim(Path({str(tmp_path)!r}), _jobs()[0]) as mine:
    assert mine
    print("held", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with claim(tmp_path, job) as mine:
            assert not mine, "a second process must not get a claim that is held"
        holder.send_signal(signal.SIGKILL)  # dies without cleaning up: the OS drops the lock
        holder.wait(10)
        with claim(tmp_path, job) as mine:
            assert mine
    finally:
        holder.kill()


def _run(args: list[str], results: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "attnlib.run", "--profile", "smoke", "--results-dir",
                             str(results), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kw)


def test_two_workers_train_every_run_once_and_compare_loads_them(tmp_path):
    done = _run(["--plan", "00:main", "--plan", "01:main", "--epochs", "1", "--seeds", "0", "1",
                 "--workers", "2", "--threads", "1"], tmp_path)
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 0, out
    starts = [line for line in out.splitlines() if "] start " in line]
    assert len(starts) == 6, out  # ResNet-20 (= BN), AlexNet, IEBN x 2 seeds, each once
    assert {line.split("]")[0] for line in starts} == {"[worker 0", "[worker 1"}, "both workers trained"
    assert not list(tmp_path.glob(".claim-*")), "claims are removed when their runs end"
    setup = resolve_profile("smoke", epochs=1, seeds=(0, 1))
    for stem in ("00", "01"):
        cmp = compare(experiments(stem, setup)["main"].variants, setup, recipe=BOOK_RECIPE, results_dir=tmp_path,
                      device="cpu", progress=False)
        assert cmp.trained_now == 0
        assert all(r["run_card"]["device"].endswith(", 1 threads") for r in cmp.records)


def test_a_stopped_queue_resumes_where_it_stopped(tmp_path):
    args = ["--plan", "00:main:ResNet-20", "--epochs", "12", "--seeds", "0", "--workers", "2", "--threads", "1"]
    queue = _run(args, tmp_path, start_new_session=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("*.ckpt")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(tmp_path.glob("*.ckpt")), "no checkpoint within two minutes"
    queue.send_signal(signal.SIGTERM)
    out, _ = queue.communicate(timeout=60)
    assert queue.returncode != 0
    assert not list(tmp_path.glob("*.json")), "the run was stopped before its end"
    deadline = time.time() + 10
    while (survivors := subprocess.run(["pgrep", "-a", "-s", str(queue.pid)], capture_output=True,
                                       text=True).stdout.splitlines()) and time.time() < deadline:
        time.sleep(0.2)
    assert survivors == [], f"SIGTERM to the queue stops its workers too: {survivors}"
    status = subprocess.run([sys.executable, "-m", "attnlib.run", "--profile", "smoke", "--results-dir",
                             str(tmp_path), "--status", *args[:6]], capture_output=True, text=True, check=True)
    assert "pending, epoch" in status.stdout and "checkpointed" in status.stdout
    epoch = int(status.stdout.split("pending, epoch ")[1].split("/")[0])
    resumed = _run(args, tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["history"]["epoch"] == list(range(1, 13))
    assert epoch >= 1 and record["run_card"]["wall_time_s"] > 0


def test_status_lines(tmp_path):
    jobs = _jobs()
    lines = queue_status(jobs, tmp_path)
    assert all(line.endswith(": pending") for line in lines[:-1])
    assert lines[-1] == "left: 10 of 10 runs; 10 of them on networks with no run to time them by"
    run_main(["--plan", "00:main:AlexNet", "--profile", "smoke", "--epochs", "1", "--seeds", "0", "1",
              "--results-dir", str(tmp_path), "--no-progress"])
    lines = queue_status(jobs, tmp_path)
    # ResNet-20 and AlexNet per seed, then the convergence and precision checks' runs
    assert [("done: " in line) for line in lines[:-1]] == [False, True, False, True] + [False] * 6
    with claim(tmp_path, jobs[0]) as mine:
        assert mine and "training now" in queue_status(jobs, tmp_path)[0]


def test_status_estimates_what_is_left_at_the_pace_of_the_same_network(tmp_path):
    jobs = _jobs()
    run_main(["--plan", "00:main:ResNet-20", "--profile", "smoke", "--epochs", "1", "--seeds", "0",
              "--results-dir", str(tmp_path), "--no-progress"])
    [path] = tmp_path.glob("resnet-20-seed0-*.json")
    record = json.loads(path.read_text())
    record["run_card"]["wall_time_s"] = 600.0  # 10 minutes an epoch
    path.write_text(json.dumps(record))
    lines = queue_status(jobs, tmp_path)
    state = [line.removeprefix(f"{job.name}: ") for job, line in zip(jobs, lines)]
    assert state[0].startswith("done: ") and state[0].endswith(" % (10 min)")
    assert state[2] == "pending, about 10 min left"  # ResNet-20, seed 1: one epoch
    assert state[4] == "pending, about 20 min left"  # the same network, twice the epochs
    assert state[1] == state[5] == "pending"  # AlexNet, IEBN: no run of theirs
    footing = footing_kind(record["history"]["footing"][-1])
    assert lines[-1] == ("left: 9 of 10 runs, about 0.8 worker-hours (3 at the pace of finished runs of the same "
                         f"network, data and recipe); 6 of them on networks with no run on {footing} to time them by")


def test_status_reads_a_record_older_than_footings(tmp_path):
    """Records written before histories kept each epoch's footing still read as done; with no
    footing to go by, nothing is timed by other runs' speed."""
    jobs = _jobs()
    run_main(["--plan", "00:main:ResNet-20", "--profile", "smoke", "--epochs", "1", "--seeds", "0",
              "--results-dir", str(tmp_path), "--no-progress"])
    [path] = tmp_path.glob("resnet-20-seed0-*.json")
    record = json.loads(path.read_text())
    del record["history"]["footing"]
    path.write_text(json.dumps(record))
    lines = queue_status(jobs, tmp_path)
    assert lines[0].startswith(f"{jobs[0].name}: done: ")
    assert lines[-1].endswith("; 6 of them on networks with no run to time them by")


def test_status_times_a_network_by_its_speed_in_other_runs(tmp_path):
    """A network with no finished run of the same data and recipe is timed by the images per
    second of its other records on the queue's footing, whatever their data size or CPU model."""
    jobs = _jobs()
    run_main(["--plan", "00:main:ResNet-20", "--profile", "smoke", "--epochs", "1", "--seeds", "0",
              "--results-dir", str(tmp_path), "--no-progress"])
    [path] = tmp_path.glob("resnet-20-seed0-*.json")
    record = json.loads(path.read_text())
    alexnet = jobs[1]
    assert alexnet.variant.label == "AlexNet"
    other = {**record, "variant": json.loads(json.dumps(alexnet.variant.spec(), default=str)),
             "dataset": {**record["dataset"], "train_images": 7, "test_images": 3},
             "history": {**record["history"],
                         "footing": [re.sub(r"^CPU: .*?,", "CPU: Another CPU,", record["history"]["footing"][-1])],
                         "train_images_per_s": [len(alexnet.data.train_labels) / 540],  # 9 min an epoch
                         "eval_images_per_s": [len(alexnet.data.test_labels) / 60]}}  # and 1 to evaluate
    (tmp_path / "alexnet-another-subset-seed9-0123456789.json").write_text(json.dumps(other))
    lines = queue_status(jobs, tmp_path)
    assert lines[1] == f"{alexnet.name}: pending, about 10 min left (from other runs of this network)"
    assert "2 at the images per second of other runs of the same network" in lines[-1]  # AlexNet, seeds 0 and 1


def test_records_archive_carries_new_records_and_never_overwrites(tmp_path):
    results, out, home = tmp_path / "results", tmp_path / "out", tmp_path / "home"
    run_main(["--plan", "00:main:ResNet-20", "--profile", "smoke", "--epochs", "1", "--seeds", "0", "1",
              "--results-dir", str(results), "--no-progress"])
    home.mkdir()
    old = next(results.glob("*-seed1-*.json"))
    (home / old.name).write_text("kept")  # already here: neither packed nor overwritten
    (results / "other-seed3-0123456789.ckpt").write_bytes(b"in progress")
    archives = records_archive.pack(results, out, skip_from=home)
    assert [a.name for a in archives] == ["records-0.tar"]
    added = sorted(records_archive.unpack(out, home))
    seed0 = next(results.glob("*-seed0-*.json")).stem
    assert added == sorted([f"{seed0}.json", f"{seed0}.pt", "other-seed3-0123456789.ckpt"])
    assert (home / old.name).read_text() == "kept"
    assert not (home / old.with_suffix(".pt").name).exists(), "only seed 0's weights travel"


def test_records_archive_keeps_the_checkpoint_with_more_epochs(tmp_path):
    results, out, home = tmp_path / "results", tmp_path / "out", tmp_path / "home"
    results.mkdir(), home.mkdir()
    for name, there, here in [("behind-seed0-0123456789.ckpt", 5, 3), ("ahead-seed0-0123456789.ckpt", 5, 7)]:
        torch.save({"epoch": there}, results / name)
        torch.save({"epoch": here}, home / name)
    records_archive.pack(results, out, skip_from=home)
    assert records_archive.unpack(out, home) == ["behind-seed0-0123456789.ckpt"]
    assert [records_archive.finished_epochs(home / n) for n in ("behind-seed0-0123456789.ckpt",
                                                                 "ahead-seed0-0123456789.ckpt")] == [5, 7]


def test_restore_checkpoints_takes_the_furthest_committed_checkpoint_that_repeats_the_record(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    git = functools.partial(subprocess.run, cwd=tmp_path, check=True, capture_output=True)
    git(["git", "init", "-q"]), git(["git", "config", "user.email", "t@t"]), git(["git", "config", "user.name", "t"])
    losses = [2.0, 1.0, 0.5]

    def history(n: int, loss: list[float] = losses) -> dict:
        return {"epoch": list(range(1, n + 1)), **{key: loss[:n] for key in restore_checkpoints.REPEATED}}

    record = results / "net-seed1-0123456789.json"
    record.write_text(json.dumps({"weights": "net-seed1-0123456789.pt", "history": history(3)}))
    ckpt = record.with_suffix(".ckpt")
    for n, loss in [(1, losses), (2, losses), (2, [2.0, 9.9]), (None, None)]:  # the third: another machine's
        if n is None:
            ckpt.unlink()  # the record landed
        else:
            torch.save({"history": history(n, loss)}, ckpt)
        git(["git", "add", "-A"]), git(["git", "commit", "-qm", f"epoch {n}"])
    assert restore_checkpoints.place(results, ["net-*"]) == [
        "net-seed1-0123456789.json: restore checkpoint at epoch 2 of 3, from git history"]
    staged = results / "restore" / ckpt.name
    assert torch.load(staged, weights_only=False)["history"]["train_loss"] == [2.0, 1.0]
    torch.save({"history": history(3)}, staged)  # a restore further along is kept
    assert restore_checkpoints.place(results, ["net-*"]) == [
        "net-seed1-0123456789.json: kept the restore checkpoint at epoch 3"]
    assert restore_checkpoints.place(results, ["other-*"]) == []


@pytest.mark.parametrize("spec", ["SE attention=se", "NAM; attention=nam"])
def test_a_variant_without_a_colon_is_refused(spec, capsys):
    with pytest.raises(SystemExit):
        run_main(["--variant", spec, "--profile", "smoke", "--status"])
    assert "has no colon" in capsys.readouterr().err


def test_device_tree_hides_the_weights_from_the_index_and_puts_them_back(tmp_path):
    """scripts/device_tree.sh: the weights and checkpoints leave the index (not the disk) for a
    device call, and come back exactly as they were; a second hide or a restore without one is refused."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "device_tree.sh"
    results = tmp_path / "book" / "results"
    results.mkdir(parents=True)
    (tmp_path / ".gitignore").write_text("*.pt\n*.ckpt\n!book/results/*-seed0-*.pt\n!book/results/*.ckpt\n")
    for name in ("a-seed0-1.json", "a-seed0-1.pt", "b-seed1-2.ckpt"):
        (results / name).write_text(name)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    def device_tree(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script), action], cwd=tmp_path, capture_output=True, text=True)

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "records")
    tracked, gitignore = git("ls-files"), (tmp_path / ".gitignore").read_text()
    hidden = device_tree("hide")
    assert hidden.returncode == 0 and "MiB" in hidden.stdout
    assert git("ls-files").split() == [".gitignore", "book/results/a-seed0-1.json"]
    assert "??" not in git("status", "--porcelain", "--untracked-files=all")  # ignored: they do not travel
    assert (results / "a-seed0-1.pt").exists() and (results / "b-seed1-2.ckpt").exists()
    assert device_tree("hide").returncode == 1
    assert device_tree("restore").returncode == 0
    assert git("ls-files") == tracked and (tmp_path / ".gitignore").read_text() == gitignore
    assert git("status", "--porcelain") == ""
    assert device_tree("restore").returncode == 1


def test_restore_weights_trains_a_run_again_and_keeps_its_weights_only_when_it_repeats_the_record(tmp_path, capsys):
    # one thread everywhere: a run repeats only on its own footing, threads included
    args = ["--plan", "00:main:ResNet-20", "--epochs", "2", "--seeds", "1", "--no-progress", "--threads", "1"]
    assert run_main([*args, "--profile", "smoke", "--results-dir", str(tmp_path)]) == 0
    [record_path] = tmp_path.glob("resnet-20-seed1-*.json")
    weights = record_path.with_suffix(".pt")
    record_text, original = record_path.read_text(), torch.load(weights, weights_only=True)
    weights.unlink()  # as in a fresh clone: git keeps seed 0's weights only
    restore = [*args, "--profile", "smoke", "--results-dir", str(tmp_path), "--restore-weights"]
    assert run_main(restore) == 0
    assert record_path.read_text() == record_text, "the record is kept as it was"
    restored = torch.load(weights, weights_only=True)
    assert restored.keys() == original.keys() and all(torch.equal(restored[k], original[k]) for k in original)
    assert not list((tmp_path / "restore").glob("*.json")) and not list((tmp_path / "restore").glob("*.pt"))
    # a record the new run does not repeat (here: doctored) gets no weights, and the run is kept aside
    weights.unlink()
    doctored = json.loads(record_text)
    doctored["history"]["test_acc"][1] += 0.01
    record_path.write_text(json.dumps(doctored))
    done = _run([*args, "--restore-weights"], tmp_path)
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 1 and "departs from the record's at epoch 2" in out and "test_acc" in out, out
    assert not weights.exists() and len(list((tmp_path / "restore").glob("resnet-20-seed1-*.pt"))) == 1
    # a record trained on another machine is refused before any training: it could not repeat here
    doctored = json.loads(record_text)
    doctored["history"]["footing"][0] = "CPU: another processor, 1 threads, bf16 autocast"
    record_path.write_text(json.dumps(doctored))
    staged = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "restore").iterdir()}
    done = _run([*args, "--restore-weights"], tmp_path)
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 1 and "cannot be restored here" in out and "another processor" in out, out
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "restore").iterdir()} == staged, "nothing trained"
    assert not weights.exists()
    # --status says, before anything trains, which runs lack their weights and which this machine can restore
    status = [*args, "--profile", "smoke", "--results-dir", str(tmp_path), "--restore-weights", "--status"]
    assert run_main(status) == 0
    out = capsys.readouterr().out
    assert "not here: its epochs ran on CPU: another processor" in out and "0 of them can be restored here" in out, out
    record_path.write_text(record_text)
    torch.save({"history": {"epoch": [1]}}, tmp_path / "restore" / record_path.with_suffix(".ckpt").name)
    assert run_main(status) == 0
    out = capsys.readouterr().out
    assert "ResNet-20 (seed 1" in out and ": can be restored here; restore checkpoint at epoch 1/2" in out, out
    assert "1 of them can be restored here" in out
