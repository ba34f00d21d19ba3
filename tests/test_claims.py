"""attnlib.claims: a statement the records no longer support stops the book's execution."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from attnlib.claims import CHECKED_PROFILES, ClaimError, claim
from attnlib.profiles import PROFILES

REPO = Path(__file__).resolve().parents[1]


def test_a_false_claim_raises_under_the_book_profile():
    assert CHECKED_PROFILES == ("book",)
    assert claim(PROFILES["book"], True, "the mean rose") is True
    with pytest.raises(ClaimError, match="the mean rose.*shift -0.30"):
        claim(PROFILES["book"], False, "the mean rose", evidence="shift -0.30")


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_claims_are_reported_not_checked_elsewhere(profile, capsys):
    assert claim(profile, False, "the mean rose") is False
    assert "not checked" in capsys.readouterr().out


def _notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    stale = nbformat.v4.new_code_cell("from attnlib.claims import claim\n"
                                      "accuracy = 0.93\n"
                                      "claim(profile, accuracy > 0.935, 'the baseline reaches 93.5 %')")
    stale.metadata["tags"] = ["claim", "remove-cell"]
    nb.cells = [params, nbformat.v4.new_markdown_cell("The baseline reaches 93.5 %."), stale]
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_a_stale_sentence_fails_the_notebooks_execution_under_book_only(tmp_path):
    import papermill

    source = _notebook(tmp_path)
    papermill.execute_notebook(str(source), str(tmp_path / "smoke.ipynb"), parameters={"profile": "smoke"},
                               kernel_name="python3", progress_bar=False, cwd=str(REPO))
    with pytest.raises(papermill.PapermillExecutionError, match="ClaimError"):
        papermill.execute_notebook(str(source), str(tmp_path / "book.ipynb"), parameters={"profile": "book"},
                                   kernel_name="python3", progress_bar=False, cwd=str(REPO))


def _code_cells():
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                yield path.stem, "".join(cell["source"]), cell.get("metadata", {}).get("tags", [])


def test_claim_cells_are_tagged_and_hidden():
    for stem, source, tags in _code_cells():
        calls = "claim(" in source.replace("def claim(", "")
        assert calls == ("claim" in tags), f"{stem}: a cell calling claim() is tagged 'claim', and only such a cell"
        if calls:
            assert "remove-cell" in tags, f"{stem}: claim cells are hidden from the page ('remove-cell')"


def test_claims_report_lists_what_does_not_hold_outside_the_book_profile(monkeypatch):
    import attnlib.claims as claims

    monkeypatch.setattr(claims, "_MADE", [])
    claim("quick", True, "the curves flatten")
    claim("quick", False, "twice the epochs move the mean by less than one seed std")
    report = claims.claims_report("quick")
    assert report.startswith("```{warning}") and "1 of its 2 statements" in report
    assert "- twice the epochs move the mean" in report and "flatten" not in report
    monkeypatch.setattr(claims, "_MADE", [("the curves flatten", True)])
    assert "1 statements" in claims.claims_report("book") and "checked" in claims.claims_report("book")


def test_a_glued_phrase_also_opens_a_sentence_under_its_capitalised_name(monkeypatch):
    """``{glue:md}`Gate_reading``` starts a sentence with the phrase ``{glue:md}`gate_reading``` puts mid-sentence."""
    import attnlib.claims as claims

    glued = {}
    monkeypatch.setattr(claims, "glue", lambda name, value: glued.setdefault(name, value.data))
    assert claims.glue_text("gate_reading", "in NAM, 90 % of the gates") == "in NAM, 90 % of the gates"
    assert glued == {"gate_reading": "in NAM, 90 % of the gates", "Gate_reading": "In NAM, 90 % of the gates"}
