"""Shorten ``python -m attnlib.run --restore-weights`` with the runs' own checkpoints from git
history: the queue commits a run's checkpoint at every session's end and deletes it when the
record lands, so git usually holds the run part-way through. For each record matched by a
pattern that has no weights, this puts the furthest checkpoint whose history repeats the
record's first epochs exactly into ``RESULTS/restore/``, where the restore resumes from it
(never replacing one that is further along). The restore still checks every later epoch and
every prediction against the record before it keeps any weights.

    python scripts/restore_checkpoints.py book/results 'iebn-twice-the-epochs-seed[12]-*'
"""
from __future__ import annotations

import argparse
import fnmatch
import io
import json
import subprocess
import sys
from pathlib import Path

import torch

from attnlib.pool import REPEATED, RESTORE_FOLDER


def git(*args: str, cwd: Path) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True).stdout


def history_of(blob: bytes) -> dict:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)["history"]


def repeats_record(history: dict, record: dict) -> bool:
    """Whether a checkpoint's ``history`` is the first epochs of ``record``'s, exactly."""
    done = len(history["epoch"])
    return 0 < done <= len(record["history"]["epoch"]) and all(
        history[key] == record["history"][key][:done] for key in REPEATED)


def furthest_checkpoint(record_path: Path, record: dict, top: Path) -> tuple[int, bytes] | None:
    """The committed checkpoint of ``record``'s run with the most epochs that repeat the record."""
    relative = record_path.with_suffix(".ckpt").resolve().relative_to(top)
    best = None
    for commit in git("log", "--format=%H", "--", str(relative), cwd=top).decode().split():
        try:
            blob = git("show", f"{commit}:{relative}", cwd=top)
        except subprocess.CalledProcessError:  # the commit that deleted it
            continue
        history = history_of(blob)
        if repeats_record(history, record) and (best is None or len(history["epoch"]) > best[0]):
            best = (len(history["epoch"]), blob)
    return best


def place(results: Path, patterns: list[str]) -> list[str]:
    """Put the furthest committed checkpoint of every matched record without weights into
    ``results/restore/``; one line per record saying what was done."""
    top = Path(git("rev-parse", "--show-toplevel", cwd=results).decode().strip())
    lines = []
    for path in sorted(results.glob("*.json")):
        if not any(fnmatch.fnmatch(path.name, p) for p in patterns):
            continue
        record = json.loads(path.read_text())
        if (results / record["weights"]).exists():
            lines.append(f"{path.name}: has its weights")
            continue
        staged = results / RESTORE_FOLDER / path.with_suffix(".ckpt").name
        have = len(history_of(staged.read_bytes())["epoch"]) if staged.exists() else 0
        found = furthest_checkpoint(path, record, top)
        if found is None or found[0] <= have:
            lines.append(f"{path.name}: " + (f"kept the restore checkpoint at epoch {have}" if have else
                                             "no committed checkpoint repeats the record"))
            continue
        staged.parent.mkdir(exist_ok=True)
        partial = staged.with_suffix(".tmp")
        partial.write_bytes(found[1])
        partial.replace(staged)
        lines.append(f"{path.name}: restore checkpoint at epoch {found[0]} of {len(record['history']['epoch'])}, "
                     f"from git history" + (f" (was {have})" if have else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the results folder, inside a git checkout")
    parser.add_argument("patterns", nargs="+", help="record file names to look at (shell patterns)")
    args = parser.parse_args(argv)
    lines = place(args.results, args.patterns)
    print("\n".join(lines) if lines else "no record matches these patterns")
    return 0 if lines else 1


if __name__ == "__main__":
    sys.exit(main())
