"""The book: sources stored clean, executed copies current and error-free, the HTML build warning-free."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from attnlib import chapters
from attnlib.data import DatasetError
from attnlib.experiment import BOOK_RECIPE
from attnlib.pool import make_jobs
from attnlib.profiles import resolve_profile
from attnlib.records import record_stem
from attnlib.run import plan_experiments
from booktools import book

REPO = book.REPO
SECTIONS = ["Idea", "Math", "Implementation", "Sanity checks", "Experiment", "Results", "Discussion",
            "Exercises", "References"]
SOURCES = book.source_notebooks()
SMOKE = resolve_profile("smoke")


def test_there_are_source_notebooks():
    assert any(p.stem == "00_setup_and_baseline" for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_is_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; run `python -m booktools.book strip`"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_every_source_cell_has_an_id(path: Path):
    """nbformat 4.5 requires cell ids; reading adds the missing ones with a warning today and will refuse
    them in a later nbformat. ``booktools.book strip`` writes them."""
    missing = [i for i, c in enumerate(json.loads(path.read_text())["cells"]) if "id" not in c]
    assert not missing, f"{path.name}: cells {missing} have no id; run `python -m booktools.book strip {path.stem}`"


REPLACEMENT_FIELD = re.compile(r"\{[A-Za-z_]\w*(\[|\.\w|:|!|\})")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_no_glued_text_shows_an_unformatted_replacement_field(path: Path):
    """A glued phrase built from a string that lost its ``f`` prefix shows ``{name[...]:.2f}`` on the page."""
    nb = nbformat.read(REPO / "book" / path.name, as_version=4)
    raw = [(i, o.metadata["scrapbook"]["name"]) for i, c in enumerate(nb.cells) if c.cell_type == "code"
           for o in c.outputs if "scrapbook" in o.get("metadata", {})
           and REPLACEMENT_FIELD.search(str(o.get("data", {}).get("application/papermill.record/text/markdown", "")))]
    assert not raw, f"{path.name}: (cell, glued name) showing a Python replacement field: {raw}; is an f missing?"


GLUED = re.compile(r"\{glue:md\}`(?P<name>\w+)`")


def _opens_a_sentence(before: str) -> bool:
    before = before.rstrip()
    return not before or before.endswith((".", ".**", ".*"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_a_sentence_that_opens_with_a_glued_phrase_starts_with_a_capital(path: Path):
    """At the start of a paragraph or after a full stop the text cites ``{glue:md}`Name```, the phrase
    :func:`attnlib.claims.glue_text` glues with its first letter capitalised, not the lower-case ``name``."""
    openings = [(i, m["name"]) for i, c in enumerate(nbformat.read(path, as_version=4).cells) if c.cell_type == "markdown"
                for m in GLUED.finditer(c.source) if _opens_a_sentence(c.source[:m.start()]) and m["name"][:1].islower()]
    assert not openings, f"{path.name}: (cell, glued name) opening a sentence in lower case: {openings}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_follows_the_chapter_skeleton(path: Path):
    nb = nbformat.read(path, as_version=4)
    headings = [line[3:].strip() for c in nb.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("## ")]
    positions = [next((i for i, h in enumerate(headings) if h.startswith(s)), None) for s in SECTIONS]
    assert None not in positions, f"{path.name} lacks sections {[s for s, p in zip(SECTIONS, positions) if p is None]}"
    assert positions == sorted(positions), f"{path.name}: sections out of order: {headings}"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "profile" in params[0].source and "results_dir" in params[0].source


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_chapter_trains_its_library_comparisons(path: Path):
    """One source per chapter: the notebook gets its comparisons from ``attnlib.chapters`` (with
    its parameters: tests/test_bad_inputs.py), uses each of them, and types no variant list of its own."""
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert f'comparisons = experiments("{path.stem}", setup' in code, f"{path.name} does not call experiments()"
    used = set(re.findall(r'comparisons\["([\w-]+)"\]', code))
    assert used == set(chapters.experiments(path.stem, SMOKE)), f"{path.name} uses comparisons {sorted(used)}"
    assert not re.search(r"\bVariant\(|(?<![.\w])compare\(", code), f"{path.name} builds its own variants"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_comparisons_borrowed_from_another_chapter_are_declared(path: Path):
    """A chapter that shows another chapter's comparison says so in ``SHOWN_FROM_OTHERS``, so that
    ``execute`` checks those runs too before it starts."""
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    borrowed = {f"{other[:2]}:{name}" for other, name in re.findall(r'experiments\("(\w+)", setup\)\["([\w-]+)"\]', code)
                if other != path.stem}
    assert borrowed == set(chapters.chapter_plan(path.stem)[1:])


def test_untrained_runs_are_the_shown_runs_without_a_record(tmp_path: Path):
    data = SMOKE.load()
    own = make_jobs(plan_experiments(["00"], SMOKE, {}), SMOKE, BOOK_RECIPE, data)
    for job in own:  # chapter 0's own runs are recorded; chapter 1's IEBN, which it shows, is not
        record_stem(tmp_path, job.variant, job.seed, job.key).with_suffix(".json").write_text("{}")
    missing = book.untrained_runs("00_setup_and_baseline", SMOKE, data, tmp_path)
    # chapter 1's BN is chapter 0's ResNet-20, seed for seed: recorded once, under either name
    assert {(job.variant.label, job.seed) for job in missing} == {("IEBN", seed) for seed in SMOKE.seeds}
    report = book.untrained_report({"00_setup_and_baseline": missing}, "book")
    assert "00_setup_and_baseline: 3 `book` runs without a record yet: IEBN (seeds 0, 1, 2)" in report
    assert "make queue" in report and "--train-missing" in report


def test_executing_under_book_stops_before_training_and_names_the_runs(tmp_path: Path):
    try:
        resolve_profile("book").load()
    except DatasetError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    with pytest.raises(SystemExit) as stop:
        book.execute("book", ["01_iebn"], out=tmp_path)
    assert "BN, noise 0.2 (seeds 0, 1, 2)" in str(stop.value) and "IEBN, twice the epochs" in str(stop.value)
    assert list(tmp_path.iterdir()) == []  # nothing executed, nothing trained


@pytest.mark.parametrize("out, regenerated", [(None, True), ("elsewhere", False)])
def test_executing_into_the_book_regenerates_the_pages_that_read_the_executed_copies(
        monkeypatch, tmp_path: Path, out, regenerated):
    calls = []
    monkeypatch.setattr(book, "execute", lambda profile, names, out, train_missing: calls.append(("execute", out)))
    monkeypatch.setattr(book, "write_everything_generated", lambda: calls.append(("generated",)))
    book.main(["execute", "--profile", "smoke", "00_setup_and_baseline",
               *(["--out", str(tmp_path / out)] if out else [])])
    assert [c[0] for c in calls] == (["execute", "generated"] if regenerated else ["execute"])


def test_cleaning_an_executed_copy_joins_split_logs_and_hides_the_parameters():
    new = nbformat.v4
    log = new.new_code_cell("for run in runs: print(run)", outputs=[
        new.new_output("stream", name="stdout", text="seed 0\n"), new.new_output("stream", name="stdout", text="seed 1\n"),
        new.new_output("display_data", data={"text/plain": "table"}),
        new.new_output("stream", name="stdout", text="seed 2\n"), new.new_output("stream", name="stderr", text="warning\n")])
    log.metadata["papermill"] = {"duration": 1.0}
    injected = new.new_code_cell('profile = "quick"', metadata={"tags": ["injected-parameters"]})
    nb = new.new_notebook(cells=[injected, log], metadata={"papermill": {}})
    book.clean_executed(nb)
    assert [(o.output_type, o.get("name"), o.get("text")) for o in log.outputs] == [
        ("stream", "stdout", "seed 0\nseed 1\n"), ("display_data", None, None),
        ("stream", "stdout", "seed 2\n"), ("stream", "stderr", "warning\n")]
    assert "papermill" not in log.metadata and "papermill" not in nb.metadata
    assert "remove-cell" in injected.metadata["tags"]


#: CI executes every chapter under smoke: no chapter may train many more SGD steps than the others
#: (about 1,000 each; chapter 3's sweep at real batches of 2 was 48,000 before SMOKE_PARAMETERS).
SMOKE_STEP_BUDGET = 8_000


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_smoke_execution_stays_small(path: Path):
    data = SMOKE.load()
    params = book.SMOKE_PARAMETERS.get(path.stem, {})
    jobs = make_jobs(plan_experiments(chapters.chapter_plan(path.stem), SMOKE, params), SMOKE, BOOK_RECIPE, data)
    # fit drops the last partial batch of an epoch
    steps = sum(len(job.data.train_labels) // job.config.batch_size * job.config.epochs for job in jobs)
    assert 0 < steps <= SMOKE_STEP_BUDGET, f"{path.stem} trains {steps} SGD steps under smoke"
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    defined = set(re.findall(r"^(\w+) *=", cell.source, re.M))
    assert set(params) <= defined, f"{path.stem}: smoke parameters {set(params) - defined} are not notebook parameters"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_colab_cell_installs_from_the_configured_repository(path: Path):
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    first_code = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert '"google.colab" in sys.modules' in first_code.source
    assert f"git+{url}" in first_code.source, "the Colab install cell must use _config.yml's repository.url"


def test_set_repository_points_config_and_every_install_cell_at_a_fork(tmp_path: Path):
    import shutil

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    shutil.copy(REPO / "_config.yml", tmp_path / "_config.yml")
    shutil.copy(SOURCES[0], tmp_path / "notebooks" / SOURCES[0].name)
    shutil.copy(REPO / "book" / SOURCES[0].name, tmp_path / "book" / SOURCES[0].name)
    fork = "https://github.com/a-teacher/our-course"
    changed = book.set_repository(fork, "spring", root=tmp_path)
    assert len(changed) == 3
    config = yaml.safe_load((tmp_path / "_config.yml").read_text())["repository"]
    assert config["url"] == fork and config["branch"] == "spring"
    for folder in ("notebooks", "book"):
        cell = next(c for c in nbformat.read(tmp_path / folder / SOURCES[0].name, as_version=4).cells
                    if c.cell_type == "code")
        assert f'"attnlib @ git+{fork}@spring"' in cell.source
    assert book.set_repository(fork, "spring", root=tmp_path) == []  # already there
    with pytest.raises(SystemExit, match="not a GitHub repository URL"):
        book.set_repository("github.com/x", root=tmp_path)


BIB_KEYS = set(re.findall(r"^@\w+\{([^,\s]+),", (REPO / "references.bib").read_text(), re.MULTILINE))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_chapter_cites_references_bib_and_lists_its_citations(path: Path):
    markdown = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
    cited = {key.strip() for group in re.findall(r"\{footcite(?::\w+)?\}`([^`]+)`", "\n".join(markdown))
             for key in group.split(",")}
    assert cited, f"{path.name} cites nothing: cite papers inline with {{footcite}}`key` (keys in references.bib)"
    assert cited <= BIB_KEYS, f"{path.name} cites keys missing from references.bib: {sorted(cited - BIB_KEYS)}"
    references = [m for m in markdown if m.startswith("## References")]
    assert references and "```{footbibliography}" in references[0], \
        f"{path.name}: the References section must render the chapter's citations with {{footbibliography}}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_every_figure_has_alt_text(path: Path):
    nb = nbformat.read(REPO / "book" / path.name, as_version=4)
    missing = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "code"
               and any("image/png" in o.get("data", {}) for o in c.outputs)
               and not c.metadata.get("mystnb", {}).get("image", {}).get("alt")]
    assert not missing, (f"{path.name}: figure cells without alt text (set the cell metadata "
                         f"mystnb.image.alt in the source and execute again): {missing}")


def test_executed_copies_match_their_sources():
    assert book.stale_copies() == []


def test_a_copy_run_with_other_comparisons_is_stale(tmp_path: Path):
    """A chapter's comparisons live in attnlib.chapters, not in its notebook: a copy whose printed
    chapter function differs from today's was run with other comparisons and must be run again."""
    for src in SOURCES:
        (tmp_path / src.name).write_bytes((REPO / "book" / src.name).read_bytes())
    assert book.stale_copies(tmp_path) == []
    nb = nbformat.read(tmp_path / "02_ba_net.ipynb", as_version=4)
    shown = next(c for c in nb.cells if c.get("id") == "chapter-source")
    shown.outputs[0]["text"] = shown.outputs[0]["text"].replace('"SE"', '"SE, renamed"')
    nbformat.write(nb, tmp_path / "02_ba_net.ipynb")
    assert [p for p in book.stale_copies(tmp_path) if "02_ba_net" in p and "other comparisons" in p]


def test_library_code_shown_in_a_copy_is_checked_and_refreshed(tmp_path: Path):
    """A copy shows library code with show_source; when the library changes, check names the
    outdated blocks and refresh-sources rewrites them (under the object's module now, if it moved)."""
    for src in SOURCES:
        (tmp_path / src.name).write_bytes((REPO / "book" / src.name).read_bytes())
    path = tmp_path / "05_dynamic_conv.ipynb"
    nb = nbformat.read(path, as_version=4)
    shown = list(book._shown_source_outputs(nb))
    index = next(i for i, o in enumerate(shown)
                 if "`attnlib.callbacks.TemperatureAnnealing`" in o["data"]["text/markdown"])
    output = shown[index]
    current = output["data"]["text/markdown"]
    output["data"]["text/markdown"] = current.replace("`attnlib.callbacks.TemperatureAnnealing`",
                                                      "`attnlib.layers.dynamic_conv.TemperatureAnnealing`") \
        .replace("    def forward(self, x", "    # an older line\n    def forward(self, x")
    nbformat.write(nb, path)
    assert book.outdated_shown_sources(nbformat.read(path, as_version=4)) == [
        "attnlib.layers.dynamic_conv.DynamicConv2d", "attnlib.layers.dynamic_conv.TemperatureAnnealing"]
    assert [p for p in book.stale_copies(tmp_path) if "05_dynamic_conv" in p and "refresh-sources" in p]
    assert book.refresh_sources(tmp_path) == [path]
    assert book.stale_copies(tmp_path) == []
    refreshed = nbformat.read(path, as_version=4)
    assert list(book._shown_source_outputs(refreshed))[index]["data"]["text/markdown"] == current


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_executed_copy_is_clean_and_shows_a_run_card(path: Path):
    nb = nbformat.read(REPO / "book" / path.name, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], "executed copy shows an error"
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"], \
        "executed copy shows stderr (progress bars, warnings): execute with progress=False"
    assert not any("papermill" in c.metadata for c in nb.cells), "papermill metadata left in cells"
    markdown = " ".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| run card |" in markdown and "git_commit" in markdown
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and re.search(r'profile = "(quick|book|full)"', injected[0].source), \
        "the book's copies must come from a real run (quick, book or full profile), not smoke"
    assert "remove-cell" in injected[0].metadata["tags"], "papermill's parameters cell is hidden from the page"
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, "figures are missing"


def test_book_builds_without_warnings(built_book):
    assert built_book.result.returncode == 0, built_book.failure()
    print(f"book built in {built_book.seconds:.0f} s")
    for src in SOURCES:
        page = built_book.html / "book" / f"{src.stem}.html"
        assert page.exists(), f"{page} was not built"
        assert "<img" in page.read_text(), f"{page.name} has no figures"


def _only_in_solutions(path: Path) -> list[str]:
    """The lines of a chapter's lab solutions (code and model answers) that no other cell of the
    chapter holds, longer than 15 characters, without maths (MathJax rewrites it on the page)."""
    nb = nbformat.read(path, as_version=4)
    solution = [c for c in nb.cells if c.metadata.get("lab", {}).get("role") == "solution"]
    elsewhere = {line.strip() for c in nb.cells if c not in solution for line in c.source.splitlines()}
    return [line.strip() for c in solution for line in c.source.splitlines()
            if len(line.strip()) > 15 and line.strip() not in elsewhere and "$" not in line
            and not line.lstrip().startswith(("```", ":class:"))]


def test_the_book_shows_no_solution_of_the_labs(built_book):
    """The labs' solutions and model answers run in the chapters but are not on their pages
    (tagged remove-cell; the teacher gets them from `make teacher`)."""
    assert built_book.result.returncode == 0, built_book.failure()
    for src in SOURCES:
        page = html.unescape(re.sub(r"<[^>]+>", "", (built_book.html / "book" / f"{src.stem}.html").read_text()))
        lines = _only_in_solutions(src)
        assert any(line.startswith("def ") for line in lines), f"{src.name}: no solution function found"
        leaked = [line for line in lines if line in page]
        assert not leaked, f"{src.stem}'s page shows solution text: {leaked[:3]}"


def test_results_overview_is_current():
    assert book.OVERVIEW.read_text() == book.overview_page(), \
        "book/results.md is stale: run `python -m booktools.book overview`"
    assert book.OVERVIEW_FIGURE.exists()


def test_benchmark_page_is_current():
    assert book.BENCHMARK.read_text() == book.benchmark_page(), \
        "book/benchmark.md is stale: run `python -m booktools.book overview`"


def test_readme_figures_are_the_executed_baseline_chapters():
    profile = nbformat.read(book.BASELINE_CHAPTER, as_version=4).metadata["attnlib"]["profile"]
    readme = (REPO / "README.md").read_text()
    assert f"the `{profile}` profile" in readme, f"the README's caption does not name the `{profile}` profile, " \
        "under which the baseline chapter ran"
    for path, png in book.readme_figures().items():
        assert str(path.relative_to(REPO)) in readme
        assert path.read_bytes() == png, f"{path.name} is stale: run `python -m booktools.book overview`"


def test_generated_pages_are_current():
    for path, text in book.generated_pages().items():
        assert path.exists() and path.read_text() == text, \
            f"{path.relative_to(REPO)} is stale: run `python -m booktools.book overview`"


def test_executing_on_a_busy_machine_is_warned_of_and_a_quiet_one_is_not():
    busy = {"quiet": False, "other_processes_cpu_share": 0.51}
    warning = book.busy_machine_warning(busy)
    assert warning is not None and "51%" in warning and "queue" in warning
    assert book.busy_machine_warning({"quiet": True, "other_processes_cpu_share": 0.02}) is None
    assert book.busy_machine_warning({"quiet": None, "other_processes_cpu_share": None}) is None  # no /proc/stat
