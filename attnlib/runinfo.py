"""Facts about the machine and the code that a run card records."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from .devices import PRECISION_NAMES, precision_name

# The checkout this library runs from, whose commit a run card records (none for a pip install).
_CHECKOUT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_CHECKOUT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str:
    """Short commit of the book repository, with ``+changes`` when attnlib or notebooks differ
    from it; ``$ATTNLIB_GIT_COMMIT`` where the code travelled without its ``.git`` (a GPU
    machine, see scripts/gpu_queue.sh); ``unknown`` outside a git checkout (a pip install on Colab)."""
    if env := os.environ.get("ATTNLIB_GIT_COMMIT"):
        return env
    commit = _git("rev-parse", "--short=10", "HEAD")
    if commit is None:
        return "unknown"
    dirty = _git("status", "--porcelain", "--", "attnlib", "notebooks")
    return commit + ("+changes" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}, {torch.get_num_threads()} threads"


def describe_footing(device: torch.device, amp_dtype: torch.dtype | None, processes: int = 1) -> str:
    """Where an epoch trains, as its history records it: the device (a CPU with its threads), the
    precision and, under torchrun, the number of processes. :func:`footing_parts` reads it back."""
    footing = f"{device_name(device)}, {precision_name(amp_dtype)}"
    return footing + (f", {processes} processes" if processes > 1 else "")


_FOOTING = re.compile(r"(?P<device>.+), (?P<precision>" + "|".join(map(re.escape, PRECISION_NAMES.values()))
                      + r")(, \d+ processes)?")


def footing_parts(footing: str) -> dict[str, str]:
    """The device and precision a :func:`describe_footing` names; nothing for one not recorded."""
    match = _FOOTING.fullmatch(footing)
    return {"device": match["device"], "precision": match["precision"]} if match else {}


def software() -> dict[str, str]:
    """The versions of the code that trains: Python, torch, torchvision, attnlib and the book's commit."""
    import torchvision

    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "attnlib": __version__, "git_commit": git_commit()}


def environment(device: torch.device) -> dict[str, str]:
    return {
        "device": device_name(device),
        **software(),
        "platform": f"{platform.system()} {platform.machine()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
