"""booktools.overview: methods paired with their plain baseline from the records alone."""
from __future__ import annotations

import copy
import math

import pytest

from attnlib import plots
from attnlib.experiment import compare, difference
from attnlib.variants import Variant
from booktools.overview import load_records, markdown_table, method_rows


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    variants = [Variant("plain", model_kwargs={"width_mult": 0.5}),
                Variant("SE", attention="se", model_kwargs={"width_mult": 0.5}),
                Variant("wide plain", model_kwargs={"width_mult": 1.0}),  # no plain network of its width
                Variant("plain, groups of 4", norm=("bn", {"norm_batch": 4}), model_kwargs={"width_mult": 0.5}),
                Variant("IEBN, groups of 4", norm=("iebn", {"norm_batch": 4}), model_kwargs={"width_mult": 0.5})]
    cmp = compare(variants, "smoke", epochs=1, seeds=(0, 1), results_dir=results, device="cpu", progress=False)
    return cmp, load_records(results)


def test_each_method_is_paired_with_the_plain_network_of_its_setting(records):
    cmp, recs = records
    rows = method_rows(recs)
    # a ghost norm's method is compared with BN over the same groups; BN over groups is no method
    assert [(r["method"], r["baseline"]) for r in rows] == [("IEBN, groups of 4", "plain, groups of 4"),
                                                            ("SE", "plain")]
    row, d = rows[1], difference(cmp, "SE", "plain")
    assert row["delta"] == pytest.approx(d["delta"]) and row["se"] == pytest.approx(d["se"])
    assert row["p_value"] == pytest.approx(d["p_value"]) and row["within_noise"] == d["within_noise"]
    assert row["seeds"] == 2 and row["params_ratio"] > 1 and "Hu et al." in row["paper"]


def test_a_thin_network_is_quoted_beside_the_papers_thin_networks(records):
    """Dynamic convolution's paper measured the width trend on MobileNetV2: a half-width pair quotes that
    table, a full-width one the paper's main figure (a method without thin figures keeps its main one at any
    width: the pairing test above)."""
    _, recs = records
    dynamic = copy.deepcopy(recs)
    for record in dynamic:
        if record["label"] == "SE":
            record["variant"].update(attention=None, conv="dynamic")
    rows = {r["method"]: r for r in method_rows(dynamic)}
    assert rows["SE"]["paper"].startswith("ImageNet MobileNetV2 x0.5: 65.4 → 69.4")
    for record in dynamic:
        if record["label"] in ("SE", "plain"):
            record["variant"]["model_kwargs"] = {}
    assert {r["method"]: r for r in method_rows(dynamic)}["SE"]["paper"].startswith("ImageNet ResNet-18")


def test_table_and_chart(records):
    _, recs = records
    rows = [{**r, "speed_ratio": 0.9} for r in method_rows(recs)]  # as if the benchmark timed these networks
    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[3].startswith("| SE | plain | ") and "| resnet20 |" in table[3]
    fig = plots.gain_vs_speed(rows)
    assert fig.axes[0].get_xlabel().startswith("training speed")
    (legend,) = fig.legends  # names in a legend under the plot, numbers beside the points
    assert [t.get_text() for t in legend.get_texts()][1].startswith("2. SE (resnet20")
    fig.canvas.draw()
    assert legend.get_window_extent().y1 < fig.axes[0].get_window_extent().y0
    # the title's key names only the kinds of point shown (smoke rows: smaller experiments, squares)
    assert "smaller experiments" in fig.axes[0].get_title() and "circles" not in fig.axes[0].get_title()
    book_rows = [{**r, "profile": "book"} for r in rows]
    assert "converged comparisons of the book profile" in plots.gain_vs_speed(book_rows).axes[0].get_title()


def test_the_speed_is_the_benchmarks_for_the_networks_it_times(records):
    """Not the runs' own images per second (a shared machine's speed moves more than a layer costs):
    the benchmark's figure for a network it times, "–" for another width or a layer with options."""
    _, recs = records
    full_width = copy.deepcopy(recs)
    for record in full_width:
        if record["label"] in ("SE", "plain"):
            record["variant"]["model_kwargs"] = {}
    speeds = {("resnet20", "bn", "conv", "se"): 0.8, ("resnet20", "iebn", "conv", "none"): 0.9}
    rows = {r["method"]: r for r in method_rows(full_width, speeds)}
    assert rows["SE"]["speed_ratio"] == 0.8 and math.isnan(rows["IEBN, groups of 4"]["speed_ratio"])
    assert all(math.isnan(r["speed_ratio"]) for r in method_rows(recs, speeds))  # half width: not timed
    table = markdown_table(list(rows.values())).splitlines()
    se_line = next(line for line in table if line.startswith("| SE |"))
    iebn_line = next(line for line in table if line.startswith("| IEBN, groups of 4 |"))
    assert se_line.split("|")[7].strip() == "0.80x" and iebn_line.split("|")[7].strip() == "–"
    fig = plots.gain_vs_speed(list(rows.values()), "CPU: X, 1 thread, bfloat16")  # IEBN's point is left out
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["1. SE (resnet20, synthetic (512 train), smoke)"]
    assert "1 comparisons left out: the benchmark does not time their network" in fig.axes[0].get_title()
    assert fig.axes[0].get_xlabel().endswith("benchmark, CPU: X, 1 thread, bfloat16)")


def test_a_headline_comparison_still_training_is_listed_apart_with_its_seed_count(records, monkeypatch):
    """A book-profile comparison with fewer than five seeds is neither a verdict nor a smaller experiment:
    the overview names it with its seed count, and its row (whose spread is undefined at one seed) is in no table."""
    import booktools.overview as overview
    from booktools.book import overview_page

    _, recs = records
    rows = method_rows(recs)
    rows[1] = {**rows[1], "profile": "book", "full_data": True, "seeds": 1, "acc_std": math.nan}  # SE, one seed
    assert overview.is_in_progress(rows[1]) and not overview.is_in_progress(rows[0])
    monkeypatch.setattr(overview, "method_rows", lambda *_: rows)
    page = overview_page()
    assert "No verdict before all their seeds are in: SE against plain (resnet20), 1 of 5 seeds." in page
    assert "| SE |" not in page and "| IEBN, groups of 4 |" in page and "nan" not in page


def test_a_subset_experiment_still_training_is_listed_apart_too(records, monkeypatch):
    """A book-profile experiment on a chapter's subset with one seed so far has no spread: it is listed as
    still training, not put among the smaller experiments with a standard error of nan."""
    import booktools.overview as overview
    from booktools.book import overview_page

    _, recs = records
    rows = method_rows(recs)
    subset = {**rows[1], "profile": "book", "full_data": False, "dataset": "fashion_mnist (3,000 train)",
              "seeds": 1, "acc_std": math.nan, "se": math.nan}
    assert overview.is_in_progress(subset)
    monkeypatch.setattr(overview, "method_rows", lambda *_: [subset, rows[0]])
    page = overview_page()
    assert "SE against plain (resnet20, fashion_mnist (3,000 train)), 1 of 5 seeds." in page
    assert "| SE |" not in page and "nan" not in page


def test_a_secondary_arm_is_complete_with_its_three_seeds_and_shown_as_a_control(records, monkeypatch):
    """A chapter's secondary arm (three seeds by plan) is neither a verdict nor still training once its
    three seeds are in: the page lists it under the converged controls."""
    import booktools.overview as overview
    from booktools.book import overview_page

    _, recs = records
    rows = method_rows(recs)
    book = {"profile": "book", "full_data": True}
    secondary = {**rows[1], **book, "method": "BA, official bottleneck", "seeds": 3}
    assert overview.seeds_needed(secondary) == 3 and overview.seeds_needed({"method": "a reader's own"}) == 5
    assert overview.is_control(secondary) and not overview.is_in_progress(secondary)
    assert overview.is_in_progress({**secondary, "seeds": 2}) and not overview.is_control({**secondary, "seeds": 2})
    assert not overview.is_control({**secondary, "method": "BA"})  # a headline arm with three seeds is still training
    groups = overview.split_rows([secondary, {**secondary, "seeds": 2}, rows[0]])
    assert groups.controls == [secondary] and groups.training == [{**secondary, "seeds": 2}]
    monkeypatch.setattr(overview, "method_rows", lambda *_: [secondary, {**secondary, "seeds": 2}, rows[0]])
    page = overview_page()
    controls = page.split("## Converged controls")[1].split("## Smaller experiments")[0]
    assert "| BA, official bottleneck |" in controls and "1 comparison." in controls
    assert "BA, official bottleneck against plain (resnet20), 2 of 3 seeds" in page


def test_a_control_with_five_seeds_is_listed_as_a_control_not_a_verdict(records):
    """Chapter 4's constant rescale trains all five seeds, like a headline arm, yet answers whether
    NAM beats it: the overview lists it under the controls, and it is still training with four."""
    import booktools.overview as overview

    _, recs = records
    row = {**method_rows(recs)[0], "profile": "book", "full_data": True, "seeds": 5}
    control = {**row, "method": "ResNet-20, branches x0.5"}
    assert "ResNet-20, branches x0.5" in overview.control_labels() and "NAM" not in overview.control_labels()
    assert overview.is_control(control) and not overview.is_headline({**row, "method": "NAM", "seeds": 4})
    groups = overview.split_rows([control, {**control, "seeds": 4}, {**row, "method": "NAM"}])
    assert groups.controls == [control] and groups.training == [{**control, "seeds": 4}]
    assert groups.headline == [{**row, "method": "NAM"}]
