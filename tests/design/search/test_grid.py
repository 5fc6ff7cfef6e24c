"""The width x resolution grid: the standard network at each width and resolution of the space,
enqueued once as the study's first trials (also when two workers open the study at once), and
marked as grid rows in candidates.csv."""

from __future__ import annotations

import csv
import threading
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from lpdet.design.search.front import CandidateRow, write_front
from lpdet.design.search.grid import GRID, enqueue_grid, grid_candidates, grid_width
from lpdet.design.search.study import candidate_of, open_storage, open_study, suggest_candidate
from lpdet.models.arch_detail import default_stages
from lpdet.models.arch_space import SearchSpace, check_in_space
from tests.design.search.conftest import tiny_settings


def _identity() -> dict:
    return {"budget_ms": 5.0, "latency_limit_ms": 4.5, "supernet": [{"sha256": "abc"}],
            "space": {"resolutions": [96, 128]}, "width": 0.25, "threads": 1}


def test_grid_is_the_standard_network_at_each_width_and_resolution(tmp_path):
    settings = tiny_settings(tmp_path / "lock", space=SearchSpace(widths=[0.5, 1.0], resolutions=[96, 128]))
    points = grid_candidates(settings)
    assert [(grid_width(c), c.resolution) for c in points] == [(0.5, 96), (0.5, 128), (1.0, 96), (1.0, 128)]
    for c in points:
        check_in_space(replace(c, width=1.0), settings.space)
        assert c.width == settings.width
        standard = default_stages(c.arch)
        assert [(s.expansion, s.kernel, s.depth) for s in c.detail.stages] == \
            [(s.expansion, s.kernel, s.depth) for s in standard]
        assert set(c.detail.extra_widths) == {grid_width(c)}
    # a space without the standard expansion (6) has no grid
    assert grid_candidates(replace(settings, space=SearchSpace(expansions=[3, 4]))) == []


def test_a_non_uniform_candidate_is_not_a_grid_point(tmp_path):
    settings = tiny_settings(tmp_path / "lock")
    point = grid_candidates(settings)[0]
    stages = list(point.detail.stages)
    stages[2] = replace(stages[2], kernel=5)
    assert grid_width(replace(point, detail=replace(point.detail, stages=stages))) is None
    assert grid_width(replace(point, detail=replace(point.detail, extra_widths=[1.0, 0.5, 0.5, 0.5]))) is None


def test_grid_trials_come_first_with_their_parameters(tmp_path):
    settings = tiny_settings(tmp_path / "lock", trials=12)
    study = optuna.create_study(direction="maximize")
    assert enqueue_grid(study, settings) == len(grid_candidates(settings)) == 6
    for expected in grid_candidates(settings):
        trial = study.ask()
        assert suggest_candidate(trial, settings) == expected
        assert trial.user_attrs[GRID] == grid_width(expected)
        study.tell(trial, 0.1)
        assert candidate_of(study.trials[trial.number], settings) == expected
    assert study.get_trials(states=(TrialState.WAITING,)) == []
    # at most half the trials are the grid's: only its first points are enqueued
    small = optuna.create_study()
    assert enqueue_grid(small, replace(settings, trials=5)) == 3 and len(small.trials) == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_opening_one_study_enqueue_the_grid_once(tmp_path, workers):
    settings = tiny_settings(tmp_path / "lock", trials=12)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_storage(url, settings.heartbeat_s)  # the tables exist before the race

    def open_one() -> None:
        open_study(open_storage(url, settings.heartbeat_s), "s", settings, _identity(),
                   on_create=lambda study: enqueue_grid(study, settings))

    barrier = threading.Barrier(workers)
    threads = [threading.Thread(target=lambda: (barrier.wait(), open_one())) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    open_one()  # a worker joining later (or the same command run again) adds nothing
    trials = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)
    seen = [tuple(sorted(t.params.items())) if t.params else tuple(sorted(t.system_attrs["fixed_params"].items()))
            for t in trials]
    assert len(seen) == len(set(seen)) == len(grid_candidates(settings))


def test_grid_rows_are_marked_in_candidates_csv(tmp_path):
    rows = [CandidateRow(trial=i, select_ap=0.1 * i, latency_ms=1.0 + i, latency_low_ms=None, latency_high_ms=None,
                         fits=True, config=f"c{i}.yaml", kind="grid" if i < 2 else "search",
                         grid_width=0.5 if i < 2 else None) for i in range(4)]
    files = write_front(tmp_path, rows, budget_ms=9.0, limit_ms=8.0, chosen=rows[3], facts={})
    with open(files["candidates"]) as f:
        read = list(csv.DictReader(f))
    assert [r["kind"] for r in read] == ["grid", "grid", "search", "search"]
    assert [r["grid_width"] for r in read] == ["0.5", "0.5", "", ""]
    assert files["plot"].stat().st_size > 0
