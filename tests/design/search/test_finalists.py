"""The finalists: which are picked, fine-tuned alike and reported on val (AP checked against
pycocotools on their saved predictions), their files and report, and a second run that redoes
nothing; Spearman's rho against the textbook formula."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lpdet.data.splits import split_of
from lpdet.design.search.driver import SearchOptions, run_search
from lpdet.design.search.finalists import BEST_GRID, BEST_SEARCHED, CHOSEN, RUNNER_UP, pick_finalists
from lpdet.design.search.finalists_report import spearman
from lpdet.design.search.front import CandidateRow
from tests.design.search.conftest import tiny_settings


def _row(trial: int, ap: float, fits: bool = True, grid: bool = False) -> CandidateRow:
    return CandidateRow(trial=trial, select_ap=ap, latency_ms=1.0 + trial, latency_low_ms=None, latency_high_ms=None,
                        fits=fits, config=f"c{trial}.yaml", kind="grid" if grid else "search",
                        grid_width=0.5 if grid else None)


def _picked(rows, runner_up=True):
    return [(role, row.trial) for role, row in pick_finalists(rows, runner_up)]


def test_finalists_are_the_chosen_the_best_fitting_grid_model_and_the_runner_up():
    rows = [_row(0, 0.30, grid=True), _row(1, 0.20, grid=True), _row(2, 0.50), _row(3, 0.40), _row(4, 0.90, fits=False),
            _row(5, 0.35, grid=True, fits=False)]
    assert _picked(rows) == [(CHOSEN, 2), (BEST_GRID, 0), (RUNNER_UP, 3)]
    assert _picked(rows, runner_up=False) == [(CHOSEN, 2), (BEST_GRID, 0)]
    # the chosen is a grid model: the best searched candidate is a finalist whatever runner_up says
    rows[0].select_ap = 0.60
    assert _picked(rows, runner_up=False) == [(CHOSEN, 0), (BEST_SEARCHED, 2)]
    # no grid model fits: nothing to compare with, the runner-up still comes
    assert _picked([r for r in rows if r.kind != "grid"]) == [(CHOSEN, 2), (RUNNER_UP, 3)]
    assert _picked([_row(0, 0.3, fits=False)]) == []


def test_spearman_matches_the_textbook_formula_without_ties():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(3, 9)
        a, b = rng.sample(range(100), n), rng.sample(range(100), n)
        rank = lambda xs: {x: i for i, x in enumerate(sorted(xs))}  # noqa: E731
        ra, rb = rank(a), rank(b)
        d2 = sum((ra[x] - rb[y]) ** 2 for x, y in zip(a, b))
        assert spearman(a, b) == pytest.approx(1 - 6 * d2 / (n * (n * n - 1)))
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties share their mean rank
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def _coco_ap(data, predictions_file) -> float:
    """AP of a predictions file straight from pycocotools (the reference)."""
    saved = json.loads(predictions_file.read_text())
    _, val = split_of(data, "val")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val.annotations))
        if not saved["results"]:
            return 0.0
        evaluator = COCOeval(gt, gt.loadRes(saved["results"]), "bbox")
        evaluator.params.imgIds = saved["image_ids"]
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    return max(float(evaluator.stats[0]), 0.0)


def test_finalists_are_fine_tuned_alike_reported_on_val_and_not_redone(tiny_search, tmp_path):
    settings, data, supernet = tiny_search
    settings = tiny_settings(tmp_path / "lock", trials=4, finalists=replace(settings.finalists, enabled=True))
    opts = SearchOptions(data=str(data), budget_ms=1000.0, out=tmp_path / "out", supernet=supernet, progress=False)
    result = run_search(settings, opts)
    out = tmp_path / "out"
    with open(out / "finalists.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["role"] for r in rows][0] == CHOSEN and int(rows[0]["trial"]) == result.chosen.trial
    assert {r["kind"] for r in rows} == {"grid", "search"}  # the search is compared with the grid
    assert len({r["steps"] for r in rows}) == 1 and int(rows[0]["steps"]) >= 1  # the same fine-tuning for each
    for finalist in result.finalists.finalists:  # val AP after fine-tuning, as pycocotools computes it
        assert finalist.metrics["AP"] == pytest.approx(_coco_ap(data, Path(finalist.predictions)),
                                                       abs=1e-6)
        assert finalist.latency_ms > 0 and finalist.fits
    fr = result.finalists
    assert fr.difference.difference == pytest.approx(fr.searched.metrics["AP"] - fr.grid.metrics["AP"], abs=1e-9)
    report = (out / "search_report.md").read_text()
    assert "minus the best grid model that fits" in report and "## How well the cheap estimate ranked" in report
    assert ("within noise" in report) == fr.difference.within_noise
    assert json.loads((out / "finalists.json").read_text())["ranking"]["by_val_ap"]
    results = sorted((out / "trials").glob("finalist*/result.json"))
    assert len(results) == 1 + 5 * len(rows)  # the latency run, and per finalist: init, train, export, 2 evals
    before = {p: p.stat().st_mtime_ns for p in results}
    table = (out / "finalists.csv").read_text()
    again = run_search(settings, opts)
    assert again.ran_here == 0 and {p: p.stat().st_mtime_ns for p in results} == before  # nothing redone
    assert (out / "finalists.csv").read_text() == table


def _result(difference: float, low: float, high: float, grid: bool = True):
    from lpdet.design.search.finalists import Finalist, FinalistsResult
    from lpdet.eval.bootstrap import BootstrapInterval

    def finalist(role, trial, kind, cheap, val):
        return Finalist(role=role, trial=trial, kind=kind, resolution=96, config="c.yaml", select_ap=cheap,
                        trial_latency_ms=1.0, metrics={"AP": val}, latency_ms=1.0, fits=True)

    searched = finalist(CHOSEN, 3, "search", 0.5, 0.10)
    grids = [finalist(BEST_GRID, 0, "grid", 0.4, 0.10 - difference)] if grid else []
    interval = BootstrapInterval("AP", difference, low, high, 200, 0.95, low <= 0 <= high) if grid else None
    return FinalistsResult([searched, *grids], 0.9, 1.0, searched, grids[0] if grid else None, interval,
                           {"epochs": 1, "lr": 0.005, "batch_size": 4})


def test_the_report_says_a_loss_to_the_grid_as_a_loss():
    from lpdet.design.search.finalists_report import comparison_text

    lost = comparison_text(_result(-0.05, -0.08, -0.02))
    assert "LOSES to the grid model" in lost and "misranked" in lost and "What would fix it" in lost
    assert "within noise" in comparison_text(_result(-0.01, -0.03, 0.01)) and \
        "LOSES" not in comparison_text(_result(-0.01, -0.03, 0.01))
    assert "beats the grid model, beyond noise" in comparison_text(_result(0.05, 0.02, 0.08))
    assert comparison_text(_result(0.0, 0.0, 0.0, grid=False)).startswith("No grid model fits")
