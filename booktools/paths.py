"""Where the book's files are: the repository that holds this folder."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
