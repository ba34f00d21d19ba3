"""The command line of the labs: ``python -m booktools.labs build | grade | time``.

    python -m booktools.labs build [chapters]      # student notebooks -> book/labs/, autograders -> build/labs/
    python -m booktools.labs grade NOTEBOOK... --lab 01_iebn   # score submissions (otter run, no Docker)
    python -m booktools.labs grade-class FOLDER --lab 01 --out grades/   # a class: gradebook.csv, feedback
    python -m booktools.labs merge-hand-grades grades/ HAND.csv   # add the hand-graded points
    python -m booktools.labs time [chapters] [--profile smoke]   # time the solution notebooks: book/labs/timings.json
    python -m booktools.labs teacher [chapters] [--out DIR]   # solution notebooks and rubric: build/teacher/
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from attnlib.arguments import positive_float, positive_int
from attnlib.chapters import chapter_name
from attnlib.files import atomic_write_text

from ..book import source_notebooks
from ..paths import REPO
from . import build, gradebook, grading, solutions
from .teachers import load_timings, write_lab_table


def built_autograder(lab: str) -> Path:
    """The autograder of ``lab`` (a chapter's notebook name, number or title), once built."""
    labs = sorted(p.stem for p in build.STUDENT_DIR.glob("*.ipynb"))
    try:
        name = chapter_name(lab)
    except ValueError:
        raise SystemExit(f"no lab {lab!r}; the labs are {', '.join(labs)} (a number such as 01 also works)") from None
    autograder = build.BUILD_DIR / name / "autograder.zip"
    if name not in labs:
        raise SystemExit(f"chapter {name} has no lab; the labs are {', '.join(labs)}")
    if not autograder.exists():
        raise SystemExit(f"the autograder of lab {name} is not built ({autograder} is missing): run `make labs` "
                         "(or `python -m booktools.labs build`) first")
    return autograder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m booktools.labs", description=build.__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="student notebooks (book/labs/) and autograders (build/labs/)")
    b.add_argument("chapters", nargs="*")
    g = sub.add_parser("grade", help="score submissions with a lab's autograder (runs their code: see book/teachers.md)")
    g.add_argument("notebooks", type=Path, nargs="+")
    g.add_argument("--lab", required=True, help="chapter name, e.g. 01_iebn")
    c = sub.add_parser("grade-class", help="grade every notebook of a folder: gradebook.csv, feedback per "
                                           "student, the open answers in one file (see book/teachers.md)")
    c.add_argument("folder", type=Path)
    c.add_argument("--lab", required=True, help="chapter name or number, e.g. 01")
    c.add_argument("--out", type=Path, required=True, help="folder for gradebook.csv, feedback/, open-answers.md")
    c.add_argument("--jobs", type=positive_int, default=2, help="notebooks graded at once (default 2)")
    c.add_argument("--timeout", type=positive_float, default=1200, help="seconds per notebook before it scores 0 "
                                                               "(default 1200)")
    m = sub.add_parser("merge-hand-grades", help="add hand-graded points (CSV: student,points) to a gradebook")
    m.add_argument("out", type=Path, help="the --out folder of grade-class")
    m.add_argument("hand", type=Path, help="CSV with the columns student and points")
    s = sub.add_parser("teacher", help="the solution notebooks and the rubric, for the teacher only "
                                       "(default build/teacher/, outside the published book)")
    s.add_argument("chapters", nargs="*")
    s.add_argument("--out", type=Path, default=solutions.TEACHER_DIR, help="folder (default build/teacher/)")
    t = sub.add_parser("time", help="run the solution notebooks and record their time, exercise by exercise")
    t.add_argument("chapters", nargs="*")
    t.add_argument("--profile", default="quick")
    args = parser.parse_args(argv)
    if args.command == "grade-class":
        return grade_class(parser, args)
    if args.command == "merge-hand-grades":
        print(f"wrote {gradebook.merge_hand_grades(args.out, args.hand)}")
        return 0
    if args.command == "grade":
        autograder = built_autograder(args.lab)
        if missing := [str(n) for n in args.notebooks if not n.is_file()]:
            parser.error(f"no such notebook: {', '.join(missing)}")
        for notebook in args.notebooks:
            results = grading.grade(notebook, autograder)
            got, total = grading.score(results)
            questions = ", ".join(f"{t['name']} {t['score']:g}/{t['max_score']:g}" for t in results["tests"]
                                  if "max_score" in t)
            print(f"{notebook}: {got:g} / {total:g} auto-graded points ({questions})")
        return 0
    chapters = source_notebooks(args.chapters or None)
    if args.command == "teacher":
        for path in solutions.build_teacher(chapters, args.out):
            print(f"wrote {path}")
        return 0
    if args.command == "build":
        for source in chapters:
            paths = build.build_lab(source)
            print(f"{source.stem}: {paths['student'].relative_to(REPO)}, {paths['autograder'].relative_to(REPO)}")
    else:
        timings = load_timings()
        for source in chapters:
            timings.setdefault(source.stem, {})[args.profile] = grading.time_solution(source.stem, args.profile)
            print(source.stem, timings[source.stem][args.profile], flush=True)
        atomic_write_text(build.TIMINGS, json.dumps(timings, indent=1, sort_keys=True) + "\n")
    print(f"wrote {write_lab_table().relative_to(REPO)}")
    return 0


def grade_class(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    autograder = built_autograder(args.lab)
    if not args.folder.is_dir():
        parser.error(f"no such folder: {args.folder}")
    lab = gradebook.LabQuestions.of(source_notebooks([autograder.parent.name])[0])
    results = gradebook.grade_class(args.folder, autograder, jobs=args.jobs, timeout=args.timeout)
    csv_path = gradebook.write_gradebook(results, lab, args.out)
    for graded in results:
        print(f"{graded.student}: {sum(graded.points.values()):g} / {sum(lab.auto.values()):g} auto-graded"
              + (f" ({graded.error})" if graded.error else ""))
    print(f"wrote {csv_path}, {args.out / 'feedback'}/, {args.out / 'open-answers.md'}")
    return 0
