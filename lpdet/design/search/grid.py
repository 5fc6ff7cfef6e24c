"""The width × resolution grid: the standard network scaled uniformly, the baseline the search must beat.

A grid point is the standard network of the space's architecture (each stage's own expansion,
3×3 kernels, full depth) with every stage and extra layer at one relative width `w` of the
space's widths, at one of the space's resolutions. The points are enqueued as the study's first
trials (`enqueue_grid`), so they are scored exactly like every candidate (inherited from the
supernet, BatchNorm recalibrated, int8 export, selection AP, measured latency), count among
``--trials`` (at most half of them) and are the sampler's start-up trials. Only the worker that created the study
enqueues them (`open_study`'s `on_create`), so workers starting together add the grid once.
"""

from __future__ import annotations

import logging

import optuna

from lpdet.design.search.settings import SearchSettings
from lpdet.design.search.study import params_of
from lpdet.models.arch_detail import NUM_EXTRA_LAYERS, ArchDetail, StageDetail, default_stages
from lpdet.models.arch_space import ArchCandidate, stage_choices

__all__ = ["grid_candidates", "enqueue_grid", "grid_width", "GRID"]

log = logging.getLogger("lpdet.search")
GRID = "grid_width"  # user attribute of a grid trial: its relative width w


def grid_candidates(settings: SearchSettings) -> list[ArchCandidate]:
    """Every grid point in the space, by width then resolution (a point whose standard choice is
    outside the space, e.g. expansions without 6, is left out)."""
    space = settings.space
    points = []
    for w in space.widths:
        stages = [StageDetail(w, stage.expansion, stage.kernel, stage.depth) for stage in default_stages(space.arch)]
        if w not in space.extra_widths or not all(_allowed(space, i, s) for i, s in enumerate(stages)):
            continue
        detail = ArchDetail(stages=stages, extra_widths=[w] * NUM_EXTRA_LAYERS)
        points += [ArchCandidate(space.arch, r, detail, width=settings.width) for r in space.resolutions]
    return points


def _allowed(space, index: int, stage: StageDetail) -> bool:
    return all(getattr(stage, name) in values for name, values in stage_choices(space, index).items())


def grid_width(candidate: ArchCandidate) -> float | None:
    """`w` when `candidate` is the standard network at uniform relative width `w` (a grid point), else None."""
    widths = {s.width for s in candidate.detail.stages} | set(candidate.detail.extra_widths)
    if len(widths) != 1:
        return None
    w = widths.pop()
    standard = [StageDetail(w, s.expansion, s.kernel, s.depth) for s in default_stages(candidate.arch)]
    return w if candidate.detail.stages == standard else None


def enqueue_grid(study: optuna.Study, settings: SearchSettings) -> int:
    """Enqueue the grid points as waiting trials, at most half the study's trials (rounded up; the
    rest are the sampler's); returns how many."""
    points = grid_candidates(settings)
    room = (settings.trials + 1) // 2
    if len(points) > room:
        log.warning("search: --trials %d leaves room for only %d of the %d width x resolution grid points "
                    "(half the trials); raise --trials for the whole grid", settings.trials, room, len(points))
    for candidate in points[:room]:
        study.enqueue_trial(params_of(candidate), user_attrs={GRID: grid_width(candidate)}, skip_if_exists=True)
    return min(len(points), room)
