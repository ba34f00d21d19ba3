# Two commands set everything up on a fresh machine:
#   make book   -> .venv, install, build the HTML book (prints where to open it)
#   make test   -> .venv if needed, the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build for the local virtual environment. pyproject.toml only sets lower bounds
# (Colab keeps its own torch); override here, e.g. `make test TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
PROFILE ?= book
NOTEBOOKS ?=

.PHONY: book test smoke test-autograder execute check labs teacher bench bench-check venv clean queue queue-status

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[book,test,labs]"
	touch $@

venv: $(VENV)/.installed

book: venv
	$(PY) -m booktools.book check
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is built: open file://$(CURDIR)/_build/html/index.html"

test: venv
	rm -rf build/smoke
	$(PY) -m booktools.book execute --profile smoke --out build/smoke
	$(PY) -m pytest tests build/smoke --nbval-lax -p no:cacheprovider

# What `make test` does for the chapters named in NOTEBOOKS (default: all), without the unit tests:
# execute them on the smoke profile into build/smoke, then nbval on them. Run it before committing a
# changed chapter: a code path that only the smoke profile's 3 epochs take fails here, not in CI.
smoke: venv
	$(PY) -m booktools.book execute --profile smoke --out build/smoke $(NOTEBOOKS)
	$(PY) -m pytest --nbval-lax -p no:cacheprovider $(if $(NOTEBOOKS),$(patsubst %,build/smoke/%.ipynb,$(NOTEBOOKS)),build/smoke)

# Run the source notebooks into the executed copies under book/ (book profile: loads the queue's
# records from book/results, and stops, naming them, if runs are missing; TRAIN_MISSING=1 trains
# them first, hours on a CPU; PROFILE=quick for minutes).
execute: venv
	$(PY) -m booktools.book execute --profile $(PROFILE) $(if $(TRAIN_MISSING),--train-missing) $(NOTEBOOKS)

check: venv
	$(PY) -m booktools.book check

# The book profile's runs, chapter by chapter so that each chapter can be executed as soon as
# possible: the baseline chapter's checks first (they decide whether the recipe stands), then
# the chapters in order of the compute they still need, least first (at the last reordering,
# estimated from the records' training speeds: BA-Net about 36 single-worker hours, NAM 40,
# IEBN 57, DynamicConv 82, its dynamic networks training at 0.44x ResNet-20's images per second
# in its ablation records), except that DynamicConv's ablations (about 4 h on 3,000 images)
# came first: they showed whether the dynamic networks still collapse when T reaches 1, which
# would have changed that chapter's design before its headline runs; for the same reason BA-Net's
# subset pair (minutes a run) comes before its headline: it holds the exact null control, which
# must agree bit for bit with its baseline; and both chapters' AlexNet pairs with twice the
# epochs, every seed (about 5 single-worker hours together; at 30 epochs on 3,000 images they
# are still learning), follow it, then BA-Net's pair with four times the epochs, every seed
# (about 6 single-worker hours: the check of the 60-epoch pair, which gained 1.9 and 2.4 points over
# 30 and whose verdict moved; on three seeds its difference held, -0.36 then -0.26, but sat on the
# line between two verdicts). Trained by a queue that
# resumes where it stopped (about an hour per ResNet-20 run on a quiet 2-core CPU with two
# workers: run it in the background, never beside `make bench`).
BOOK_PLAN ?= 00:main:ResNet-20 01:main 00:convergence 00:precision 00:main:AlexNet \
	03:shorter 03:convergence 03:paper 03:sweep 05:ablations 05:alexnet \
	02:alexnet 02:alexnet-longer 05:alexnet-longer 02:alexnet-longest 02:main 02:ablation 02:longer \
	04:main 04:pixel 04:longer \
	01:longer 01:batch 01:noise \
	05:main 05:widths 05:longer 05:widths-longer
QUEUE_ARGS ?= --workers 2 --threads 1
queue: venv
	$(PY) -m attnlib.run --profile book --results-dir book/results --no-progress $(QUEUE_ARGS) $(addprefix --plan ,$(BOOK_PLAN))

queue-status: venv
	$(PY) -m attnlib.run --profile book --results-dir book/results --status $(addprefix --plan ,$(BOOK_PLAN))

# Course labs from the chapters: student notebooks -> book/labs/ (commit them), autograders -> build/labs/.
labs: venv
	$(PY) -m booktools.labs build

# The zipped autograder grading a submission in a new virtual environment (installs otter and torch:
# minutes, gigabytes; not part of `make test`). ATTNLIB_TEST_TORCH picks the torch to install.
test-autograder: venv
	ATTNLIB_TEST_FRESH_ENV=1 $(PY) -m pytest tests/test_labs.py -k fresh_environment -p no:cacheprovider

# The teacher's solution notebooks and rubric -> build/teacher/ (never published, never committed).
teacher: venv
	$(PY) -m booktools.labs teacher

# Every chapter's layer against the plain network, three runs (2-core AMD EPYC: 76 s each with
# 2 threads, 122 s with --threads 1; 2-core Xeon with AMX, bf16: about 60 s and 90 s); the page
# shows the median of the runs taken on a quiet machine.
# BENCH_ARGS e.g. "--threads 1" or "--device cuda --compile". Never beside the training queue.
BENCH_ARGS ?=
BENCH_RUNS ?= 3
bench: venv
	for run in $$(seq $(BENCH_RUNS)); do $(PY) -m attnlib.bench --out-dir book/benchmark $(BENCH_ARGS) || exit 1; done
	$(PY) -m booktools.book overview

# The same runs into build/bench-check, compared with the page instead of added to it: each figure's
# median against the page's range (the page is reproduced when every one lands inside).
bench-check: venv
	rm -rf build/bench-check
	for run in $$(seq $(BENCH_RUNS)); do $(PY) -m attnlib.bench --out-dir build/bench-check $(BENCH_ARGS) || exit 1; done
	$(PY) -m booktools.book bench-check build/bench-check

clean:
	rm -rf _build build
