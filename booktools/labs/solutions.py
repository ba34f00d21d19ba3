"""The teacher's material, kept out of the book: a solution notebook per lab, readable in plain
Jupyter, and one rubric for all labs (``make teacher``; ``python -m booktools.labs teacher``).

The chapter notebooks hold the solutions (cells marked ``{"lab": {"role": "solution"}}``) and
run them, but the book's pages do not show them (those cells are tagged ``remove-cell``), and the
student notebooks replace them by ``...``. This module writes them out for the teacher, to a
folder outside the published site (default ``build/teacher/``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

from attnlib.files import atomic_write_text

from ..paths import REPO
from .build import BOOK_DISPLAY_TAGS, lab_cells, plain_citations, with_lab_profile
from .teachers import exercises

TEACHER_DIR = REPO / "build" / "teacher"
#: A MyST directive fence: ````{admonition} Model answer ... ```` (with its options lines).
_DIRECTIVE = re.compile(r"^(`{3,})\{(\w+)\}[ \t]*([^\n]*)\n((?::\w+:[^\n]*\n)*)(.*?)\n\1[ \t]*$", re.S | re.M)


def plain_markdown(text: str) -> str:
    """MyST directives as plain Markdown that any Jupyter renders: an admonition becomes its
    title in bold followed by its body."""
    def plain(match: re.Match) -> str:
        title = match[3].strip() or match[2].capitalize()
        return f"**{title}.**\n\n{match[5].strip()}"
    return _DIRECTIVE.sub(plain, text)


def solution_notebook(source: Path):
    """The lab of ``source`` with its solutions and model answers, the hidden tests left out."""
    nb = with_lab_profile(nbformat.read(source, as_version=4))
    cells = []
    for cell in (nbformat.from_dict(json.loads(json.dumps(c))) for c in lab_cells(nb)):
        lab = cell.metadata.pop("lab", {})
        if lab.get("role") == "test":
            continue
        tags = [t for t in cell.metadata.pop("tags", []) if t not in BOOK_DISPLAY_TAGS]
        if tags:
            cell.metadata["tags"] = tags
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        else:
            cell.source = plain_markdown(cell.source)
        cells.append(cell)
    plain_citations(cells)
    title = next(i for i, c in enumerate(cells) if c.cell_type == "markdown")
    cells.insert(title + 1, nbformat.v4.new_markdown_cell(
        f"**Teacher's copy of the lab `{source.stem}`, with the solutions.** Do not hand it out: the "
        "students' notebook is `book/labs/" + source.stem + ".ipynb`. The rubric is `rubric.md` beside it."))
    for i, cell in enumerate(cells):
        cell["id"] = f"solution-{i}"
    return nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)


def _model_answers(source: Path) -> dict[str, str]:
    """Each hand-graded question's model answer (plain Markdown), by question name."""
    answers, question = {}, None
    for cell in lab_cells(nbformat.read(source, as_version=4)):
        lab = cell.metadata.get("lab", {})
        if lab.get("question"):
            question = lab["question"] if lab.get("manual") else None
        elif question and lab.get("role") == "solution" and cell.cell_type == "markdown":
            answers[question] = plain_markdown(cell.source)
    return answers


def rubric(sources: list[Path]) -> str:
    """One Markdown rubric: per lab, each exercise with its points and who grades it, and the
    model answer of every question graded by hand."""
    lines = ["# Rubric of the labs", "",
             "Autograded exercises are scored by the lab's hidden tests (`python -m booktools.labs grade-class`); "
             "the feedback file of each student names what failed. Questions graded by hand are collected "
             "in `open-answers.md` by `grade-class`; score them against the model answer below and merge "
             "the points with `python -m booktools.labs merge-hand-grades`.", ""]
    for source in sources:
        items, answers = exercises(source), _model_answers(source)
        lines += [f"## {source.stem}", "", "| exercise | points | graded by |", "|---|---|---|"]
        lines += [f"| {n}. {item['title']} | {item['points']} | {'hand' if item['manual'] else 'autograder'} |"
                  for n, item in enumerate(items, 1)]
        lines += ["", f"Total: {sum(item['points'] for item in items)} points.", ""]
        for item in items:
            if item["manual"]:
                lines += [f"### {item['title']} ({item['points']} points, by hand)", "",
                          answers.get(item["name"], "(no model answer in the chapter)"), ""]
    return "\n".join(lines).rstrip() + "\n"


def build_teacher(sources: list[Path], out: Path = TEACHER_DIR) -> list[Path]:
    """Write ``<lab>-solution.ipynb`` for every source and ``rubric.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        path = out / f"{source.stem}-solution.ipynb"
        atomic_write_text(path, nbformat.writes(solution_notebook(source)))
        written.append(path)
    atomic_write_text(out / "rubric.md", rubric(sources))
    return [*written, out / "rubric.md"]
