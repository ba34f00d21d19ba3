"""Book tooling: run the source notebooks into executed copies under ``book/``.

    python -m booktools.book execute --profile quick            # every notebook
    python -m booktools.book execute 01_iebn                     # book profile: from the queue's records
    python -m booktools.book execute --profile smoke --out build/smoke 00_setup_and_baseline
    python -m booktools.book check                               # executed copies match sources?
    python -m booktools.book refresh-sources                     # library code shown in copies, current
    python -m booktools.book strip                               # clear outputs of the sources
    python -m booktools.book overview                            # results page, wall times, versions

Sources (``notebooks/*.ipynb``) are stored without outputs. ``execute`` runs each with
papermill, with the working directory set to the output folder (so records land in
``book/results/``, shared by the chapters), and removes papermill's per-cell metadata. Under the
``book`` profile it first checks that every run the chapters show has a record, and stops,
naming the missing runs, unless told to train them (``--train-missing``). The book is
rendered from the executed copies with execution off. ``check`` fails when a copy's code
or text no longer matches its source, i.e. the copy is stale and must be executed again, and
when library code a copy shows (:func:`attnlib.plots.show_source`) is no longer the library's:
``refresh-sources`` rewrites those blocks, which depend on the library's source alone.
"""
from __future__ import annotations

import argparse
import base64
import importlib
import pkgutil
import re
import sys
import time
from pathlib import Path

import nbformat

import attnlib
from attnlib.benchmark import machine_load
from attnlib.chapters import CHAPTERS, chapter_plan
from attnlib.chapters import source as chapter_source
from attnlib.data import ImageDataset
from attnlib.experiment import BOOK_RECIPE
from attnlib.files import atomic_write_bytes, atomic_write_text
from attnlib.plots import source_block
from attnlib.pool import Job, make_jobs, untrained
from attnlib.profiles import PROFILES, Profile, profiles_help, resolve_profile
from attnlib.run import plan_experiments

from .paths import REPO
from .reproducibility import METADATA_KEY, environment_table, execution_metadata, wall_times_table

SOURCES = REPO / "notebooks"
BOOK = REPO / "book"


def source_notebooks(names: list[str] | None = None) -> list[Path]:
    paths = sorted(SOURCES.glob("[0-9][0-9]_*.ipynb"))
    if names:
        chosen = [p for p in paths if p.stem in names or p.name in names]
        missing = set(names) - {p.stem for p in chosen} - {p.name for p in chosen}
        if missing:
            raise SystemExit(f"no source notebook named {sorted(missing)}; have {[p.stem for p in paths]}")
        return chosen
    return paths


def _cells(nb) -> list[tuple[str, str]]:
    """(type, source) of every cell but papermill's injected parameters."""
    return [(c.cell_type, c.source) for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]


def _joined_streams(outputs: list) -> list:
    """``outputs`` with each run of consecutive stream outputs to the same stream joined into one:
    the kernel splits a long print loop at its flushes, and the page would show one log as two boxes."""
    joined: list = []
    for out in outputs:
        last = joined[-1] if joined else None
        if (out.get("output_type") == "stream" and last is not None and last.get("output_type") == "stream"
                and last.get("name") == out.get("name")):
            last["text"] += out["text"]
        else:
            joined.append(out)
    return joined


def clean_executed(nb) -> None:
    """Drop papermill's bookkeeping from an executed notebook, join the kernel's split stream
    outputs, and hide its injected parameters cell from the book's page (the run card says
    what was run)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = _joined_streams(cell.outputs)
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nb.metadata.pop("papermill", None)


#: Profiles whose runs take hours on a CPU: ``execute`` does not train them unless asked to.
SLOW_PROFILES = ("book",)

#: Notebook parameters the ``smoke`` execution (CI) passes besides the profile: it checks that a
#: chapter runs, not what it finds, so a chapter whose design trains many more SGD steps than the
#: others gets smaller data. Chapter 3's sweep trains real batches of 2 images for four times the
#: profile's epochs; on the smoke profile's 512 images that was 48,000 steps, against about 1,000
#: for every other chapter, and its execution had not finished after 20 minutes beside the
#: training queue; on 64 images, 6,000 steps, it took 390 s (``test_smoke_execution_stays_small``).
SMOKE_PARAMETERS: dict[str, dict] = {"03_mabn": {"sweep_subset": 64}}


def untrained_runs(name: str, setup: Profile, data: ImageDataset, results_dir: Path) -> list[Job]:
    """The runs that chapter ``name`` shows under the profile ``setup`` and that have no record
    in ``results_dir``: executing it would train them first."""
    return untrained(make_jobs(plan_experiments(chapter_plan(name), setup, {}), setup, BOOK_RECIPE, data), results_dir)


def untrained_report(missing: dict[str, list[Job]], profile: str) -> str:
    """What :func:`execute` says instead of training ``missing`` (chapter -> jobs) inline."""
    lines = []
    for name, jobs in missing.items():
        seeds: dict[str, list[int]] = {}
        for job in jobs:
            seeds.setdefault(job.variant.label, []).append(job.seed)
        arms = "; ".join(f"{label} (seed{'s' * (len(s) > 1)} {', '.join(map(str, s))})" for label, s in seeds.items())
        lines.append(f"{name}: {len(jobs)} `{profile}` run{'s' * (len(jobs) > 1)} without a record yet: {arms}.")
    return "\n".join(lines + [
        "Executing would train them first, for hours on a CPU. Train them with the queue (`make queue`; "
        "`make queue-status` shows where it stands) and execute again, or pass --train-missing to train them now."])


def busy_machine_warning(load: dict) -> str | None:
    """What to tell someone about to execute chapters on a machine that :func:`machine_load`
    found busy (``load`` is its dict); None on a quiet machine or where it cannot tell."""
    if load["quiet"] is not False:
        return None
    return (f"other processes take {load['other_processes_cpu_share']:.0%} of the CPU (the training queue?): "
            "the chapters will execute several times slower and time their benchmark tables under load, "
            "which the tables then say. Stop the queue first: make queue resumes where it stopped.")


def execute(profile: str, names: list[str] | None = None, out: Path = BOOK, train_missing: bool = False,
            **parameters) -> list[Path]:
    """Run the source notebooks ``names`` (default: all) into executed copies in ``out``. Under a
    slow profile (``book``) it first checks that every run the chapters show has its record in
    ``out/results`` and stops, listing the missing runs, unless ``train_missing``."""
    import papermill

    sources = source_notebooks(names)
    if profile in SLOW_PROFILES and not train_missing:
        setup = resolve_profile(profile)
        data = setup.load()
        missing = {src.stem: jobs for src in sources if (jobs := untrained_runs(src.stem, setup, data, out / "results"))}
        if missing:
            raise SystemExit(untrained_report(missing, profile))
    with machine_load() as load:
        time.sleep(1.0)
    if warning := busy_machine_warning(load):
        print(warning, file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources:
        dst = out / src.name
        start = time.perf_counter()
        print(f"executing {src.relative_to(REPO)} -> {dst} (profile {profile})", flush=True)
        smoke = SMOKE_PARAMETERS.get(src.stem, {}) if profile == "smoke" else {}
        papermill.execute_notebook(str(src), str(dst), parameters={"profile": profile, "progress": False,
                                                                   **smoke, **parameters},
                                   cwd=str(out), kernel_name="python3", progress_bar=False)
        seconds = time.perf_counter() - start
        nb = nbformat.read(dst, as_version=4)
        clean_executed(nb)
        nb.metadata[METADATA_KEY] = execution_metadata(profile, seconds)
        nbformat.write(nb, dst)
        print(f"  done in {seconds:.0f} s", flush=True)
        written.append(dst)
    return written


def shown_chapter_source(nb) -> str | None:
    """What an executed copy printed as its chapter's comparisons (the ``chapter-source`` cell)."""
    cell = next((c for c in nb.cells if c.get("id") == "chapter-source"), None)
    if cell is None:
        return None
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


SHOWN_SOURCE = re.compile(r"`(?P<name>[\w.]+)`\n```python\n(?P<code>.*?)\n```", re.S)
"""A block written by :func:`attnlib.plots.show_source`: the object's dotted name, then its code."""


def _resolve(dotted: str, cut: int):
    """``dotted`` split after ``cut`` parts into a module and attributes, or None."""
    parts = dotted.split(".")
    try:
        obj = importlib.import_module(".".join(parts[:cut]))
    except ImportError:
        return None
    for attr in parts[cut:]:
        obj = getattr(obj, attr, None)
    return obj


def _library_object(dotted: str):
    """What ``show_source`` named ``module.Qualified.name``: found there, or (moved since) by its
    name in another attnlib module; None when the library no longer has it."""
    depth = dotted.count(".") + 1
    found = next((obj for cut in range(depth - 1, 0, -1) if (obj := _resolve(dotted, cut)) is not None), None)
    if found is not None:
        return found
    name = dotted.rsplit(".", 1)[1]
    for module in pkgutil.walk_packages(attnlib.__path__, "attnlib."):
        obj = getattr(importlib.import_module(module.name), name, None)
        if obj is not None and getattr(obj, "__module__", None) == module.name:
            return obj
    return None


def _shown_source_outputs(nb):
    """Every markdown output of a code cell that holds a shown-source block."""
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            markdown = output.get("data", {}).get("text/markdown")
            if isinstance(markdown, str) and SHOWN_SOURCE.search(markdown):
                yield output


def _current(match: re.Match) -> str:
    """The block as ``show_source`` writes it today (the object may have moved module); the block
    unchanged when the library no longer has the object (then only executing again helps)."""
    obj = _library_object(match["name"])
    return match[0] if obj is None else source_block(obj)


def outdated_shown_sources(nb) -> list[str]:
    """Names of the library objects whose code ``nb`` shows differently from the library now, or
    that the library no longer has."""
    return [m["name"] for output in _shown_source_outputs(nb) for m in SHOWN_SOURCE.finditer(output["data"]["text/markdown"])
            if _library_object(m["name"]) is None or _current(m) != m[0]]


def refresh_shown_sources(nb) -> int:
    """Rewrite every shown-source block of ``nb`` with the library's code now; how many changed."""
    changed = outdated_shown_sources(nb)
    for output in _shown_source_outputs(nb):
        output["data"]["text/markdown"] = SHOWN_SOURCE.sub(_current, output["data"]["text/markdown"])
    return len(changed)


def stale_copies(out: Path = BOOK) -> list[str]:
    """Problems with the executed copies in ``out``: missing, code/text differing from the source, or
    run with other comparisons than the chapter's function in ``attnlib.chapters`` defines now."""
    problems = []
    for src in source_notebooks():
        dst = out / src.name
        shown = dst.relative_to(REPO) if dst.is_relative_to(REPO) else dst
        if not dst.exists():
            problems.append(f"{shown} is missing: run `make execute`")
            continue
        again = f"execute it again (`make execute NOTEBOOKS={src.stem}`)"
        copy = nbformat.read(dst, as_version=4)
        if _cells(nbformat.read(src, as_version=4)) != _cells(copy):
            problems.append(f"{shown} does not match {src.relative_to(REPO)}: {again}")
        elif shown_chapter_source(copy) not in (None, chapter_source(src.stem) + "\n"):
            problems.append(f"{shown} was run with other comparisons than "
                            f"attnlib.chapters.{CHAPTERS[src.stem].__name__} defines now: {again}")
        elif outdated := outdated_shown_sources(copy):
            problems.append(f"{shown} shows older code of {', '.join(outdated)} than the library holds: "
                            "run `python -m booktools.book refresh-sources` (or execute it again if the library no longer has it)")
    return problems


def refresh_sources(out: Path = BOOK) -> list[Path]:
    """Bring the library code shown in every executed copy in ``out`` up to date; the copies changed."""
    changed = []
    for src in source_notebooks():
        dst = out / src.name
        if not dst.exists():
            continue
        nb = nbformat.read(dst, as_version=4)
        if refresh_shown_sources(nb):
            atomic_write_text(dst, nbformat.writes(nb) + "\n")
            changed.append(dst)
    return changed


OVERVIEW = BOOK / "results.md"
OVERVIEW_FIGURE = BOOK / "images" / "overview-gain-vs-speed.png"
BENCHMARK = BOOK / "benchmark.md"
BASELINE_CHAPTER = BOOK / "00_setup_and_baseline.ipynb"
#: The README's figures, copied from the executed baseline chapter: file -> the code that draws it there.
README_FIGURES = {BOOK / "images" / "baseline-learning-curves.png": "fig = plots.learning_curves(cmp)\n",
                  BOOK / "images" / "baseline-prediction-grid.png": "fig = plots.prediction_grid(cmp)\n"}


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def overview_page(results_dir: Path = BOOK / "results") -> str:
    """The results overview page (markdown), generated from the experiment records."""
    from attnlib.chapters import SECONDARY_SEEDS
    from attnlib.significance import smallest_p_value

    from .overview import (HEADLINE_SEEDS, benchmark_speeds, load_records, markdown_table, method_rows, seeds_needed,
                           split_rows)

    speeds = benchmark_speeds()
    headline, training, controls, smaller = split_rows(method_rows(load_records(results_dir), speeds.speeds))
    subset = [r for r in smaller if r["profile"] == "book"]
    quick = [r for r in smaller if r["profile"] != "book"]
    main = (markdown_table(headline) if headline else
            "*No converged comparison has finished yet: the `book` profile's runs are trained by a "
            "queue (see [Running the notebooks](running.md)), and this table fills in as their records land.*")
    in_queue = [f"{r['method']} against {r['baseline']} ({r['model']}{'' if r['full_data'] else ', ' + r['dataset']}), "
                f"{r['seeds']} of {seeds_needed(r)} seeds" for r in training]
    still_training = ("No verdict before all their seeds are in: " + "; ".join(in_queue) + "." if in_queue
                      else "*Nothing: every `book` comparison with a record has all its seeds.*")
    quick_profile = PROFILES["quick"]
    return f"""# Results overview

Every method of the book against its plain baseline, gathered from the experiment records
in `book/results/` by `python -m booktools.book overview`: nothing on this page is typed.
A row pairs a network with the plain network of the same architecture trained on the same
data with the same recipe and seeds (BN, plain convolutions, no attention); the
chapters explain each experiment. Accuracies are final-epoch test accuracies, mean ± std
over seeds; Δ is the difference of the means with its standard error (SE). *noise* says
whether Δ is within two standard errors and gives the exact permutation p-value, which
does not trust the seeds' spread, with the smallest value it can take for that number of
seeds (3 against 3: 0.1, so never below 0.05). The train speed is what the layer costs as the
[benchmark](benchmark.md) measures it: the network's training-step speed relative to the
plain network's, timed alone and interleaved with it on synthetic batches on a quiet machine ({speeds.machine or 'no machine yet'};
median over the quiet runs). It is not taken from the runs in the table: they trained over
days, on several machines and beside other work, and the speed of a shared machine moves by
more than most layers cost. "–": a network the benchmark does not time (another width, a
layer with other options, AlexNet); the chapters time those beside their plain network. The
paper's figure is the paper's own result in its own setting, quoted with its source, not a
prediction of ours.

## Converged comparisons

The `book` profile: all 60,000 Fashion-MNIST training images, a recipe long enough for the plain
ResNet-20's curves to end on a plateau, {HEADLINE_SEEDS} seeds or more; the baseline chapter checks
the length with twice the epochs, and each chapter checks its own verdict the same way. These
are the book's verdicts. {_count(headline, 'comparison')}.

{main}

## Converged controls

Controls and ablations of the `book` profile: converged like the comparisons above. Most are
on the first {SECONDARY_SEEDS} seeds (against a {HEADLINE_SEEDS}-seed baseline the permutation p-value cannot go below
{smallest_p_value(SECONDARY_SEEDS, HEADLINE_SEEDS):.2g}, against {SECONDARY_SEEDS} not below {smallest_p_value(SECONDARY_SEEDS, SECONDARY_SEEDS):.2g}); a control that sets the bar
a method must clear (chapter 4's constant rescale, chapter 5's wider static network) has all
{HEADLINE_SEEDS}. Each answers a question of its chapter (does a verdict move with twice the epochs, does
IEBN lose less than BN under a noise attack, does NAM do more than halve every branch); none
is a verdict on a method by itself. {_count(controls, 'comparison')}.

{markdown_table(controls) if controls else "*None has finished yet.*"}

## Still training

`book`-profile comparisons, on all the data or a chapter's subset, with some of their seeds
still in the queue. {still_training}

## Smaller experiments

Everything else: the chapters' experiments on subsets of a few thousand images, and the
`quick` profile. {_count(smaller, 'comparison')}; {sum(r["within_noise"] for r in smaller)} of them are within two standard errors of zero.

### The `book` recipe on a chapter's subset

Every planned seed is in. Each chapter says how it reads its subset's runs: as a verdict
only where the chapter has checked them at twice the epochs (MABN's paper setting), as
ablations otherwise. {_count(subset, 'comparison')}.

{markdown_table(subset) if subset else "*None has finished yet.*"}

### The `quick` profile

{quick_profile.epochs} epochs on {quick_profile.train_subset:,} images (or a chapter's subset): the networks were still learning fast when
their runs stopped, so a row says how fast a layer starts, not where it ends. Read them as
the chapters do, not as verdicts. {_count(quick, 'comparison')}.

{markdown_table(quick)}

![Accuracy difference against training speed for every method, relative to its baseline]({OVERVIEW_FIGURE.relative_to(BOOK).as_posix()})
"""


def benchmark_page() -> str:
    """The benchmark page (markdown), generated from ``book/benchmark/*.json``."""
    from .benchmark_page import load_results, page

    return page(load_results())


def write_overview() -> None:
    from attnlib.plots import gain_vs_speed

    from .overview import benchmark_speeds, load_records, method_rows, split_rows

    atomic_write_text(OVERVIEW, overview_page())
    atomic_write_text(BENCHMARK, benchmark_page())
    OVERVIEW_FIGURE.parent.mkdir(parents=True, exist_ok=True)
    speeds = benchmark_speeds()
    headline, _, _, smaller = split_rows(method_rows(load_records(BOOK / "results"), speeds.speeds))
    gain_vs_speed(headline or smaller, speeds.machine).savefig(OVERVIEW_FIGURE, dpi=110)


def readme_figures(executed: Path = BASELINE_CHAPTER) -> dict[Path, bytes]:
    """The README's figures (PNG bytes), as the executed baseline chapter draws them."""
    cells = nbformat.read(executed, as_version=4).cells
    figures = {}
    for path, code in README_FIGURES.items():
        pngs = [base64.b64decode(output.data["image/png"]) for cell in cells if cell.source == code.strip()
                for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
        if len(pngs) != 1:
            raise SystemExit(f"{executed.name} shows {len(pngs)} figures drawn by {code.strip()!r}, where the README "
                             f"takes {path.name} from one: execute the chapter (`make execute NOTEBOOKS={executed.stem}`) "
                             "or point booktools.book.README_FIGURES at the cell that draws it now")
        figures[path] = pngs[0]
    return figures


#: Markdown generated from the executed copies, included by book/running.md and book/reproducibility.md.
GENERATED = BOOK / "_generated"
WALL_TIMES = GENERATED / "wall-times.md"
ENVIRONMENT = GENERATED / "environment.md"


def generated_pages() -> dict[Path, str]:
    """The generated markdown files and their current content."""
    executed = [BOOK / src.name for src in source_notebooks()]
    return {WALL_TIMES: wall_times_table(executed, BOOK / "results"), ENVIRONMENT: environment_table(executed)}


def write_generated_pages() -> None:
    GENERATED.mkdir(exist_ok=True)
    for path, text in generated_pages().items():
        atomic_write_text(path, text)


def write_everything_generated() -> None:
    """Every generated page and figure: the overview (from the records), the wall-times and
    environment pages and the README's figures (from the executed chapters)."""
    write_overview()
    write_generated_pages()
    for path, png in readme_figures().items():
        atomic_write_bytes(path, png)
    print(f"wrote {WALL_TIMES.relative_to(REPO)} and {ENVIRONMENT.relative_to(REPO)}")
    print(f"wrote the README's figures: {', '.join(str(p.relative_to(REPO)) for p in README_FIGURES)}")
    print(f"wrote {OVERVIEW.relative_to(REPO)}, {OVERVIEW_FIGURE.relative_to(REPO)} and "
          f"{BENCHMARK.relative_to(REPO)}")


def strip(paths: list[Path]) -> None:
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        nbformat.write(nb, path)


INSTALL = re.compile(r'("attnlib @ git\+)([^"@]+)(@[^"]+)?(")')
REPOSITORY_URL = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")


def set_repository(url: str, branch: str = "main", root: Path = REPO) -> list[Path]:
    """Point the book at another repository (a teacher's fork): ``repository.url`` and
    ``branch`` in ``_config.yml`` (launch buttons, lab links) and the Colab install cell of
    every source notebook and executed copy. Returns the files changed; the labs follow with
    ``make labs``."""
    if not REPOSITORY_URL.fullmatch(url):
        raise SystemExit(f"{url!r} is not a GitHub repository URL like https://github.com/OWNER/NAME")
    if not re.fullmatch(r"[\w./-]+", branch):
        raise SystemExit(f"{branch!r} is not a branch name")
    config = root / "_config.yml"
    text = re.sub(r"(?m)^(  url: ).*$", rf"\g<1>{url}", config.read_text(), count=1)
    text = re.sub(r"(?m)^(  branch: ).*$", rf"\g<1>{branch}", text, count=1)
    changed = [config] if text != config.read_text() else []
    atomic_write_text(config, text)
    pin = "" if branch == "main" else f"@{branch}"
    for path in sorted([*(root / "notebooks").glob("*.ipynb"), *(root / "book").glob("*.ipynb")]):
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code")
        source = INSTALL.sub(lambda m: f"{m[1]}{url}{pin}{m[4]}", cell.source)
        if source != cell.source:
            cell.source = source
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m booktools.book", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="run source notebooks with papermill into executed copies")
    ex.add_argument("notebooks", nargs="*", help="names like 00_setup_and_baseline (default: all)")
    ex.add_argument("--profile", default="book", choices=list(PROFILES), help=profiles_help("book"))
    ex.add_argument("--out", type=Path, default=BOOK, help="folder for executed copies (default: book/)")
    ex.add_argument("--train-missing", action="store_true",
                    help="under the book profile, train the runs that have no record yet instead of stopping")
    sub.add_parser("check", help="fail if an executed copy is missing or differs from its source")
    sub.add_parser("refresh-sources", help="rewrite the library code shown in the executed copies "
                                           "(show_source blocks) from the library as it is now")
    sub.add_parser("overview", help="write the results overview page from the experiment records")
    bc = sub.add_parser("bench-check", help="do new benchmark records reproduce the benchmark page? "
                                            "(exit status 1 when a figure lands outside the page's range)")
    bc.add_argument("folder", type=Path, help="folder of the new records (`make bench-check` writes build/bench-check)")
    rp = sub.add_parser("set-repository", help="point the book at your fork: _config.yml and every notebook's "
                                               "Colab install cell (then run `make labs`)")
    rp.add_argument("url", help="https://github.com/OWNER/NAME")
    rp.add_argument("--branch", default="main")
    st = sub.add_parser("strip", help="clear outputs and execution counts of source notebooks")
    st.add_argument("notebooks", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "execute":
        out = args.out.resolve()
        execute(args.profile, args.notebooks or None, out, train_missing=args.train_missing)
        if out == BOOK.resolve():
            # the wall-times and environment pages and the README's figures read the executed
            # copies: regenerate them now, so that a commit of the chapters never leaves them stale
            write_everything_generated()
    elif args.command == "overview":
        write_everything_generated()
    elif args.command == "bench-check":
        from .benchmark_page import load_results, reproduction
        report, reproduced = reproduction(load_results(), load_results(args.folder))
        print(report)
        return 0 if reproduced else 1
    elif args.command == "set-repository":
        changed = set_repository(args.url, args.branch)
        print(f"changed {len(changed)} files; now run `make labs` for the student notebooks")
    elif args.command == "refresh-sources":
        changed = refresh_sources()
        print(f"refreshed the shown library code in {len(changed)} executed copies: "
              + (", ".join(p.name for p in changed) or "none was outdated"))
    elif args.command == "check":
        problems = stale_copies()
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            return 1
        print(f"{len(source_notebooks())} executed copies match their sources")
    else:
        strip(source_notebooks(args.notebooks or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
