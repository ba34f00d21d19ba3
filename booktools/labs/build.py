"""Course labs generated from the chapter notebooks with otter-grader.

The command line (``python -m booktools.labs build | grade | time``) is in :mod:`booktools.labs.cli`;
running the autograder on notebooks is in :mod:`booktools.labs.grading`.

The chapter notebook is the single source. Its lab cells carry a ``lab`` entry in their
metadata, invisible on the book page:

* ``{"question": "q1_iebn", "points": 4}`` on the markdown cell that opens an exercise
  (``"manual": true`` for a question graded by hand);
* ``{"role": "solution"}``: the answer (code: function bodies and top-level statements are
  replaced by ``...`` in the student notebook, signatures and docstrings stay; markdown:
  removed, otter leaves an answer cell);
* ``{"role": "check"}``: a self-check the student runs (kept);
* ``{"role": "test"}``: a hidden test of the autograder (removed from the student notebook);
* ``{"role": "book"}``: on the book page only (the reference implementation beside the maths,
  which is the answer to the first exercise, and the paragraph that introduces it).

``build`` turns these into otter's own notebook format (raw ``# BEGIN QUESTION`` ... cells),
runs ``otter assign``, and keeps the sections a lab needs: everything before
"## Implementation" (setup, idea, maths) and from "## Exercises" on. The sections between
show the library's implementation and the equation written out (the sanity checks), i.e.
the answer to the first exercise; they stay on the book page.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from attnlib.data import FASHION_MNIST_FILES, DatasetError, default_data_root, find_fashion_mnist

from ..paths import REPO

STUDENT_DIR = REPO / "book" / "labs"
BUILD_DIR = REPO / "build" / "labs"
TIMINGS = STUDENT_DIR / "timings.json"
LAB_SECTIONS_END, LAB_SECTIONS_RESUME = "## Implementation", "## Exercises"
BIBLIOGRAPHY_FILE = REPO / "references.bib"
CITATION = re.compile(r"\{footcite[pt]?\}`([^`]+)`")
BIBLIOGRAPHY = re.compile(r"```\{footbibliography\}\s*```")
SHOWS_REFERENCE = re.compile(r"show_source\([^)]*\breference_")
BOOK_DISPLAY_TAGS = {"hide-input", "hide-output", "hide-cell", "remove-input", "remove-output", "remove-cell"}
ASSIGNMENT_CONFIG = {
    "init_cell": False, "check_all_cell": False, "export_cell": False, "run_tests": False,
    "generate": True, "tests": {"ok_format": False, "files": False},
}


def _repository() -> dict:
    return yaml.safe_load((REPO / "_config.yml").read_text())["repository"]


def colab_url(notebook: Path) -> str:
    """The Colab address of a committed notebook, from _config.yml's repository."""
    repo = _repository()
    slug = repo["url"].removeprefix("https://github.com/").rstrip("/")
    return f"https://colab.research.google.com/github/{slug}/blob/{repo.get('branch', 'main')}/" \
           f"{notebook.relative_to(REPO).as_posix()}"


def _lab(cell) -> dict:
    return cell.metadata.get("lab", {})


def _heading(cell) -> str:
    return cell.source.lstrip().split("\n", 1)[0] if cell.cell_type == "markdown" else ""


def lab_cells(nb) -> list:
    """The cells a lab keeps: before "## Implementation", and from "## Exercises" on, without the
    ``claim`` cells (they check the book's prose against its records; a lab has no records) and
    the book-only ones. A kept markdown cell must not cite a glued value (the lab's plain notebook
    cannot show it), and no kept cell may show a reference implementation (an exercise's answer)."""
    kept, skipping = [], False
    for cell in nb.cells:
        heading = _heading(cell)
        if heading.startswith(LAB_SECTIONS_END):
            skipping = True
        elif heading.startswith(LAB_SECTIONS_RESUME):
            skipping = False
        if not skipping and "claim" not in cell.metadata.get("tags", []) and _lab(cell).get("role") != "book":
            kept.append(cell)
    shown = [c.source.split("\n", 1)[0] for c in kept if c.cell_type == "code" and SHOWS_REFERENCE.search(c.source)]
    if shown:
        raise ValueError(f"a lab would show a reference implementation, the answer to an exercise: {shown}; mark the "
                         'cell (and the paragraph that introduces it) with the lab role "book"')
    if glued := [c.source.split("\n", 1)[0] for c in kept if c.cell_type == "markdown" and "{glue:" in c.source]:
        raise ValueError(f"a lab keeps the sections before {LAB_SECTIONS_END!r}, where these markdown cells cite glued "
                         f"values a lab notebook cannot show: {glued}; print the value in the code cell instead, or "
                         "move the paragraph below that heading")
    if not any(_lab(c).get("question") for c in kept):
        raise ValueError("the chapter has no lab questions: mark its exercises (see booktools/labs/build.py)")
    return kept


def _statement_lines(source: str) -> list[tuple[ast.stmt, int, int]]:
    """(node, first line, last line), 0-based, of every top-level statement."""
    return [(node, node.lineno - 1, node.end_lineno - 1) for node in ast.parse(source).body]


def _kept_header(node: ast.stmt) -> int:
    """Last line (0-based) of a function's signature and docstring, the part a stub keeps."""
    first = node.body[0]
    is_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
        and isinstance(first.value.value, str)
    return first.end_lineno - 1 if is_docstring else first.lineno - 2


def mark_solution(source: str) -> str:
    """Otter's solution markers around everything a student writes.

    A top-level function keeps its signature and docstring, and its body becomes ``...``;
    a top-level assignment ``name = value`` becomes ``name = ...``; anything else is removed.
    """
    lines = source.splitlines()
    out: list[str] = []
    for node, start, end in _statement_lines(source):
        if isinstance(node, ast.FunctionDef):
            header_end = _kept_header(node)
            indent = " " * node.body[0].col_offset
            out += lines[start:header_end + 1] + [f"{indent}# BEGIN SOLUTION"] + lines[header_end + 1:end + 1] \
                + [f"{indent}# END SOLUTION", ""]
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            names = " = ".join(t.id for t in node.targets)
            out += ['""" # BEGIN PROMPT', f"{names} = ...", '""" # END PROMPT', "# BEGIN SOLUTION NO PROMPT",
                    *lines[start:end + 1], "# END SOLUTION"]
        else:
            out += ["# BEGIN SOLUTION NO PROMPT", *lines[start:end + 1], "# END SOLUTION"]
    return "\n".join(out).rstrip() + "\n"


def plain_citations(cells: list, bibliography: Path = BIBLIOGRAPHY_FILE) -> None:
    """Replace the book's MyST citations, which a notebook shows as raw text, in place:
    ``{footcite}`key``` becomes ``[n]`` and ``{footbibliography}`` a numbered list of the
    cited works, numbered in order of first citation (plain text: markdown's escaped
    parentheses would be math delimiters in Jupyter)."""
    from pybtex.database import parse_file
    from pybtex.plugin import find_plugin

    markdown = [c for c in cells if c.cell_type == "markdown"]
    keys = list(dict.fromkeys(k.strip() for c in markdown for m in CITATION.finditer(c.source)
                              for k in m[1].split(",")))
    entries = parse_file(str(bibliography)).entries if keys else {}
    missing = [k for k in keys if k not in entries]
    if missing:
        raise KeyError(f"cited but not in {bibliography.name}: {missing}")
    style, backend = find_plugin("pybtex.style.formatting", "plain")(), find_plugin("pybtex.backends", "text")()
    listing = "\n".join(f"{n}. " + " ".join(style.format_entry(str(n), entries[k]).text.render(backend).split())
                        for n, k in enumerate(keys, 1))
    number = {k: n for n, k in enumerate(keys, 1)}
    for cell in markdown:
        cell.source = CITATION.sub(lambda m: "[" + ", ".join(str(number[k.strip()]) for k in m[1].split(",")) + "]",
                                   cell.source)
        cell.source = BIBLIOGRAPHY.sub(lambda _: listing, cell.source)


def _raw(text: str):
    return nbformat.v4.new_raw_cell(text)


def grading_requirements() -> str:
    """What a submission needs besides otter: torch, torchvision and attnlib from the book's
    repository (``_config.yml``; a fork after ``python -m booktools.book set-repository``)."""
    repo = _repository()
    return f"torch\ntorchvision\nattnlib @ git+{repo['url'].rstrip('/')}@{repo.get('branch', 'main')}\n"


def grading_data(work: Path) -> list[str]:
    """Copy Fashion-MNIST (the labs' ``quick`` data, 30 MB) beside the master notebook, so the
    autograder carries it and a grading run needs no download; its paths for otter's ``files``."""
    try:
        found = find_fashion_mnist(default_data_root())
    except DatasetError as err:
        raise SystemExit(f"the autograder carries Fashion-MNIST, which is not here: {err}") from err
    folder = work / "data" / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        shutil.copy(found / name, folder / name)
    return [f"data/fashion-mnist/{name}" for name in FASHION_MNIST_FILES]


def otter_master(nb, name: str, files: list[str] = ()):
    """The chapter's lab cells in otter-assign's format (raw BEGIN/END cells, test configs)."""
    config = yaml.safe_dump({"name": name, **ASSIGNMENT_CONFIG, "requirements": "requirements.txt",
                             "files": list(files)}, sort_keys=False)
    cells, open_question = [_raw("# ASSIGNMENT CONFIG\n" + config)], False
    kept = [nbformat.from_dict(json.loads(json.dumps(cell))) for cell in lab_cells(nb)]
    plain_citations(kept)
    for cell in kept:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        tags = [t for t in cell.metadata.pop("tags", []) if t not in BOOK_DISPLAY_TAGS]  # the book's toggles
        if tags:
            cell.metadata["tags"] = tags
        lab = cell.metadata.pop("lab", {})
        role = lab.get("role")
        if open_question and (lab.get("question") or not lab):
            cells.append(_raw("# END QUESTION"))
            open_question = False
        if lab.get("question"):
            question = {"name": lab["question"], "points": lab["points"], **({"manual": True} if lab.get("manual") else {})}
            cells.append(_raw("# BEGIN QUESTION\n" + yaml.safe_dump(question, sort_keys=False)))
            open_question = True
            cells.append(cell)
        elif role == "solution":
            if cell.cell_type == "code":
                cell.source = mark_solution(cell.source)
            cells += [_raw("# BEGIN SOLUTION"), cell, _raw("# END SOLUTION")]
        elif role == "test":
            cell.source = '""" # BEGIN TEST CONFIG\nhidden: true\n""" # END TEST CONFIG\n' + cell.source
            cells += [_raw("# BEGIN TESTS"), cell, _raw("# END TESTS")]
        else:
            cells.append(cell)
    if open_question:
        cells.append(_raw("# END QUESTION"))
    title = next(i for i, c in enumerate(cells) if c.cell_type == "markdown")
    cells.insert(title + 1, nbformat.v4.new_markdown_cell(_lab_note(name)))
    return nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)


def _lab_note(name: str) -> str:
    repo = _repository()
    return (f"**Lab.** This notebook is the lab version of the chapter `{name}`: its setup, idea and "
            "maths, then the exercises. The implementation, sanity checks, experiments and results are "
            "on the chapter's page in the book: read them after the lab. Run the cells in order; each "
            "exercise has a self-check cell that says what is wrong. Change `profile` in the parameters "
            "cell to `smoke` for a fast run on synthetic images.\n\n"
            "**Where to work.** On Colab, run the first cell: it installs the book's library, and the "
            "data download by themselves. On your own machine (Python 3.10 or later): "
            f"`pip install \"attnlib @ git+{repo['url'].rstrip('/')}@{repo.get('branch', 'main')}\" "
            "jupyter`, then put Fashion-MNIST's four `*-ubyte.gz` files (from "
            "github.com/zalandoresearch/fashion-mnist) in a folder `data/fashion-mnist/` beside this "
            "notebook, or on Debian/Ubuntu `sudo apt-get install dataset-fashion-mnist`.\n\n"
            "**Handing in.** Write only where the exercises ask (the `...` bodies, `results`, `best` and "
            "the answer cell), run the whole notebook once from the top, save it, and hand in the "
            "`.ipynb` file named after yourself (e.g. `ada.ipynb`) as your teacher says: it is graded by "
            "running it from the top.")


def otter_command(*args: str) -> list[str]:
    """The command line of otter-grader, from this environment."""
    exe = Path(sys.executable).parent / "otter"
    if not exe.exists():
        raise SystemExit("otter-grader is not installed: pip install -e '.[labs]'")
    return [str(exe), *args]


def run_otter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(otter_command(*args), capture_output=True, text=True, check=False)


def build_lab(source: Path, student_dir: Path = STUDENT_DIR, build_dir: Path = BUILD_DIR) -> dict[str, Path]:
    """Student notebook, solution notebook and autograder zip of one chapter."""
    name = source.stem
    work = build_dir / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    master = work / f"{name}-master.ipynb"
    (work / "requirements.txt").write_text(grading_requirements())
    nb = with_lab_profile(nbformat.read(source, as_version=4))
    nbformat.write(otter_master(nb, name, grading_data(work)), master)
    result = run_otter("assign", "--no-pdfs", str(master), str(work / "dist"))
    if result.returncode != 0:
        raise RuntimeError(f"otter assign failed for {name}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    paths = {"student": student_dir / f"{name}.ipynb", "solution": work / "solution.ipynb",
             "autograder": work / "autograder.zip"}
    student_dir.mkdir(parents=True, exist_ok=True)
    student = nbformat.read(work / "dist" / "student" / master.name, as_version=4)
    for i, cell in enumerate(student.cells):  # otter's added cells get random ids: keep the file stable
        cell["id"] = f"lab-{i}"
    nbformat.write(student, paths["student"])
    shutil.copy(work / "dist" / "autograder" / master.name, paths["solution"])
    shutil.copy(next((work / "dist" / "autograder").glob("*.zip")), paths["autograder"])
    return paths


LAB_PROFILE = "quick"
"""A lab's default profile: minutes on a CPU (the chapters default to ``book``, hours on a CPU)."""


def with_lab_profile(nb):
    """``nb`` with its parameters cell's ``profile = "..."`` set to :data:`LAB_PROFILE` (comment kept)."""
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = re.sub(r'^profile = "[a-z]+"', f'profile = "{LAB_PROFILE}"', cell.source, flags=re.M)
    return nb


