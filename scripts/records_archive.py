"""Carry run records between machines in a few archives: the GPU machine returns at most
8 files of 16 MiB, so its new records, seed-0 weights and unfinished checkpoints travel as
numbered tar files.

    python scripts/records_archive.py pack RESULTS OUT [--skip-from FOLDER]
    python scripts/records_archive.py unpack OUT book/results

``pack`` leaves out the records already in ``--skip-from`` (those the queue started with).
``unpack`` never overwrites a record that is already there, replaces a local checkpoint only
with one that has more finished epochs, deletes the local checkpoint of a run whose record
arrives (stop a local queue first: it would train that run again), and says what it added.
"""
from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

LIMIT = 15 * 2**20  # below the 16 MiB the device tool returns per file
MAX_ARCHIVES = 7    # and one file left for the log


def files_to_pack(results: Path, skip_from: Path | None) -> list[Path]:
    """New records, the seed-0 weights of new records, and every checkpoint of a run in progress."""
    known = {p.name for p in skip_from.glob("*.json")} if skip_from else set()
    records = [p for p in sorted(results.glob("*.json")) if p.name not in known]
    weights = [r.with_suffix(".pt") for r in records if "-seed0-" in r.name and r.with_suffix(".pt").exists()]
    return records + weights + sorted(results.glob("*.ckpt"))


def pack(results: Path, out: Path, skip_from: Path | None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    archives: list[Path] = []
    buffer, tar = None, None
    for path in files_to_pack(results, skip_from):
        size = path.stat().st_size
        if tar is None or buffer.tell() + size > LIMIT:
            if tar is not None:
                tar.close()
                archives.append(_write(out, len(archives), buffer))
            buffer = io.BytesIO()
            tar = tarfile.open(fileobj=buffer, mode="w")
        tar.add(path, arcname=path.name)
    if tar is not None:
        tar.close()
        archives.append(_write(out, len(archives), buffer))
    if len(archives) > MAX_ARCHIVES:
        raise SystemExit(f"{len(archives)} archives: more than the {MAX_ARCHIVES} the device tool returns; "
                         "train fewer runs per call")
    return archives


def _write(out: Path, index: int, buffer: io.BytesIO) -> Path:
    path = out / f"records-{index}.tar"
    path.write_bytes(buffer.getvalue())
    return path


def unpack(archives: Path, results: Path) -> list[str]:
    results.mkdir(parents=True, exist_ok=True)
    added = []
    for archive in sorted(archives.glob("records-*.tar")):
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                target = results / Path(member.name).name
                is_checkpoint = target.suffix == ".ckpt"
                if not member.isfile() or (target.exists() and not is_checkpoint):
                    continue
                if is_checkpoint and target.with_suffix(".json").exists():
                    continue  # that run has finished here already
                content = tar.extractfile(member).read()
                if is_checkpoint and target.exists() and finished_epochs(target) >= finished_epochs(content):
                    continue  # the local run is as far along or further
                target.write_bytes(content)
                added.append(target.name)
                if target.suffix == ".json":
                    target.with_suffix(".ckpt").unlink(missing_ok=True)  # that run is done: drop its local resume point
    return added


def finished_epochs(checkpoint: Path | bytes) -> int:
    """The epochs a training checkpoint (a file or its bytes) has finished."""
    import torch  # only unpack needs it; pack runs wherever the records are
    source = io.BytesIO(checkpoint) if isinstance(checkpoint, bytes) else checkpoint
    return torch.load(source, map_location="cpu", weights_only=False)["epoch"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("results", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--skip-from", type=Path)
    u = sub.add_parser("unpack")
    u.add_argument("archives", type=Path)
    u.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        for path in pack(args.results, args.out, args.skip_from):
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    else:
        added = unpack(args.archives, args.results)
        print(f"added {len(added)} files to {args.results}" + "".join(f"\n  {name}" for name in added))
    return 0


if __name__ == "__main__":
    sys.exit(main())
