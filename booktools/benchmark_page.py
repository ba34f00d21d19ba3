"""The book's benchmark page, rendered from the JSON records of ``python -m attnlib.bench``
in ``book/benchmark/`` (``python -m booktools.book overview``)."""
from __future__ import annotations

import json
from pathlib import Path

from attnlib.bench import epoch_line, load_line, loop_line, table

from .paths import REPO

BENCH_DIR = REPO / "book" / "benchmark"


def load_results(bench_dir: Path = BENCH_DIR) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(bench_dir).glob("*.json"))]


#: Why a method misses its target, from torch.profiler (shown on the page when it does).
WHY_MISSED = {
    "NAM": "NAM adds a whole BatchNorm (statistics, normalisation and their backward), a sigmoid, "
           "a product and, in the backward, the sum of the two gradients of its input: about six "
           "passes over every residual branch's output, each a memory-bound kernel in eager PyTorch. "
           "A hand-written backward does not remove any of them (the BN backward is already one "
           "kernel); only fusing the elementwise chain into one kernel would, which is what "
           "`torch.compile` generates (not measured on a GPU here).",
    "DynamicConv (K=4)": "Every dynamic convolution mixes K kernels per image and runs a grouped "
                         "convolution with one group per image; on this CPU oneDNN's forward for that grouped "
                         "convolution took about 2.7x the plain convolution's in an earlier profiling run of this project, "
                         "and the backward adds the gradients of the K experts. The K-branch form (K plain convolutions weighted "
                         "per image, see the chapter) is slower still here.",
}


def page(results: list[dict]) -> str:
    """The book's benchmark page (markdown) from the benchmark's JSON records."""
    sections = []
    for r in results:
        s, env = r["settings"], r["environment"]
        missed = [row["label"] for row in r["rows"] if row["meets_target"] is False]
        verdict = (f"Targets missed: {', '.join(missed)}." if missed else "Every method meets its target.")
        flags = ["channels_last" if s["channels_last"] else "NCHW", "torch.compile" if s["compile"] else "eager"]
        threads = f"{s['threads']} thread" + ("s" if s["threads"] > 1 else "")
        machine = env["device"].split(",")[0] + (f", {threads}" if env["device"].startswith("CPU") else "")
        sections.append(f"""## {machine}

{s['model']}, batch {s['batch_size']}, images {'x'.join(map(str, s['image_shape']))}, {s['dtype']},
{', '.join(flags)}; median of {s['repeats']} interleaved rounds of {s['steps']} steps. torch {env['torch']},
commit `{env['git_commit']}`, {env['date']}; the run took {r['wall_s']:.0f} s.

{table(r)}

{loop_line(r)} {verdict}

{" ".join(filter(None, (load_line(r), epoch_line(r))))}
""" + "".join(f"\n*{label}:* {WHY_MISSED[label]}\n" for label in missed if label in WHY_MISSED))
    body = "\n".join(sections) if sections else "No benchmark record yet: run `make bench`.\n"
    return f"""# Benchmark: what each layer costs

`python -m attnlib.bench` (or `make bench`) builds the same network once per chapter's layer and
times all of them in one run, interleaved, on synthetic batches already on the device: a
training step (forward, cross-entropy, backward, SGD step) and an inference forward. It
reports absolute figures and, more robust on a shared machine, ratios to the plain network;
the *target* is the largest step-time ratio we accept for each layer. Activation memory
counts the tensors autograd saves for one fp32 step; peak memory is the allocator's peak
of a step, measured on GPUs only. The last line of each section times the training loop
itself: `fit` (device-resident data, augmentation, optimiser, schedule, bookkeeping)
against the bare step on pre-made tensors. Everything below is rendered from the JSON
files in `book/benchmark/` by `python -m booktools.book overview`; nothing is typed.

No GPU was available for the runs on this page: GPU figures (and the H100 epoch times the
benchmark issue asks for) are not measured yet. `python -m attnlib.bench --device cuda --compile`
on a GPU writes a record that this page then shows.

{body}"""
