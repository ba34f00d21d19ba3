"""attnlib.profiles: how much data, how many epochs and seeds each profile means."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attnlib.profiles import PROFILES, resolve_profile
from attnlib.significance import smallest_p_value

REPO = Path(__file__).resolve().parents[1]


def test_resolve_profile():
    smoke = resolve_profile("smoke")
    assert smoke == PROFILES["smoke"] and smoke.dataset == "synthetic"
    p = resolve_profile("smoke", epochs=7, seeds=[4], batch_size=16)
    assert (p.epochs, p.seeds, p.batch_size) == (7, (4,), 16)
    assert PROFILES["smoke"].epochs == 3  # the table is not modified
    q = resolve_profile("smoke", dataset="cifar10")
    assert q.dataset == "cifar10" and q.dataset_options == {}
    assert resolve_profile("smoke", dataset="synthetic").dataset_options == smoke.dataset_options
    quick = resolve_profile("quick", epochs=2)
    assert quick.train_subset == 12_000 and quick.epochs == 2
    assert resolve_profile(p) == p
    with pytest.raises(ValueError, match="smoke"):
        resolve_profile("medium")
    with pytest.raises(ValueError, match="seed"):
        resolve_profile("smoke", seeds=[])
    with pytest.raises(ValueError, match="repeat a seed"):
        resolve_profile("smoke", seeds=[0, 0, 1])


def test_smoke_profile_loads_its_dataset():
    data = resolve_profile("smoke").load()
    assert (len(data.train_labels), len(data.test_labels), data.in_channels, data.image_size) == (512, 256, 1, 16)


def test_book_profile_is_all_of_fashion_mnist_with_five_seeds():
    book = PROFILES["book"]
    assert (book.dataset, book.train_subset, book.test_subset, len(book.seeds)) == ("fashion_mnist", None, None, 5)
    assert smallest_p_value(len(book.seeds), len(book.seeds)) < 0.05


def test_a_profiles_description_is_read_from_its_fields():
    quick = resolve_profile("quick", epochs=9, seeds=[0, 1])
    assert quick.describe() == ("quick: fashion_mnist, 12,000 training images, 9 epochs, 2 seeds "
                                "(the quick profile with its epochs, seeds changed)")
    assert resolve_profile("smoke", dataset="fashion_mnist").purpose == "the smoke profile with its dataset changed"
    assert resolve_profile("book", epochs=None).purpose == PROFILES["book"].purpose  # nothing changed
    assert PROFILES["smoke"].describe().startswith("smoke: synthetic, 512 training images, 3 epochs, 3 seeds")


@pytest.mark.parametrize("command", [["attnlib.run"], ["booktools.book", "execute"]])
def test_the_command_lines_help_names_every_profile(command):
    result = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True, text=True,
                            cwd=REPO, check=True, env={**os.environ, "COLUMNS": "100"})
    text = "".join(result.stdout.split())  # argparse wraps lines, at spaces and after hyphens
    for profile in PROFILES.values():
        assert "".join(profile.describe().split()) in text


@pytest.mark.parametrize("page", ["README.md", "book/running.md", "notebooks/00_setup_and_baseline.ipynb"])
def test_the_typed_profile_tables_agree_with_the_profiles(page):
    """The pages that describe the profiles in a table give each one's epochs, seeds and number
    of training images as :data:`PROFILES` sets them."""
    text = (REPO / page).read_text()
    if page.endswith(".ipynb"):
        text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "markdown")
    rows = {m[1]: m for m in re.finditer(r"^\| `(\w+)` \| ([^|]*) \| (\d+) \| (\d+) \|", text, re.M)}
    assert set(rows) == set(PROFILES), f"{page}'s profile table lists {sorted(rows)}"
    for name, profile in PROFILES.items():
        data, epochs, seeds = rows[name].group(2, 3, 4)
        assert (int(epochs), int(seeds)) == (profile.epochs, len(profile.seeds)), f"{page}: {name}"
        if profile.dataset == "fashion_mnist":
            assert f"{profile.image_counts()[0]:,}" in data, f"{page}: {name}'s training images"
