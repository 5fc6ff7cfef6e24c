"""The Pareto front and the choice, against a brute-force reference; the files they are written to."""

from __future__ import annotations

import csv
import json
import random

from lpdet.design.search.front import CandidateRow, choose, pareto_front, write_front


def _rows(seed: int, n: int = 40) -> list[CandidateRow]:
    rng = random.Random(seed)
    return [CandidateRow(trial=i, select_ap=round(rng.random(), 2), latency_ms=round(rng.uniform(1, 10), 1),
                         latency_low_ms=None, latency_high_ms=None, fits=False, config=f"c{i}.yaml")
            for i in range(n)]


def _dominated(row, rows) -> bool:
    return any(o.select_ap >= row.select_ap and o.latency_ms <= row.latency_ms and
               (o.select_ap > row.select_ap or o.latency_ms < row.latency_ms) for o in rows)


def test_front_is_exactly_the_non_dominated_rows():
    for seed in range(20):
        rows = _rows(seed)
        front = pareto_front(rows)
        expected = [r for r in rows if not _dominated(r, rows)]
        # ties on both objectives: one representative each
        assert {(r.select_ap, r.latency_ms) for r in front} == {(r.select_ap, r.latency_ms) for r in expected}
        assert [r.latency_ms for r in front] == sorted(r.latency_ms for r in front)


def test_choice_is_the_most_accurate_fitting_candidate():
    rows = _rows(3)
    for row in rows:
        row.fits = row.latency_ms <= 4.0
    chosen = choose(rows)
    assert chosen.fits and chosen.select_ap == max(r.select_ap for r in rows if r.fits)
    assert choose([r for r in rows if not r.fits]) is None


def test_files_hold_every_candidate_the_front_and_the_choice(tmp_path):
    rows = _rows(4, n=10)
    for row in rows:
        row.fits = row.latency_ms <= 6.0
    chosen = choose(rows)
    files = write_front(tmp_path, rows, budget_ms=6.5, limit_ms=6.0, chosen=chosen, facts={"study": "s"})
    with open(files["candidates"]) as f:
        assert [int(r["trial"]) for r in csv.DictReader(f)] == list(range(10))
    summary = json.loads(files["json"].read_text())
    assert summary["chosen"]["trial"] == chosen.trial and summary["study"] == "s"
    assert len(summary["front"]) == len(pareto_front(rows))
    assert files["plot"].stat().st_size > 0
