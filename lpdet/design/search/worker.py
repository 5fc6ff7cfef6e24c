"""One search worker's loop: take trials from the study until it holds enough finished ones (all
workers together) or this worker's time budget is spent, with a progress bar (trials done, best
so far, time left)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from lpdet.design.search.candidate import CandidateRejected, SearchContext, score_candidate
from lpdet.design.search.settings import SearchSettings
from lpdet.design.search.study import (AP, LATENCY, WORKER, is_feasible, recover_dead_workers, retry,
                                      set_latency_constraint, suggest_candidate, worker_id)
from lpdet.progress import progress_bar

__all__ = ["Worker", "trial_folder"]

log = logging.getLogger("lpdet.search")
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_S = 1.0  # how often a worker waiting for the others' last trials looks at the study
SURPLUS = "surplus"  # user attribute of a trial started when the study already held enough


def _counts(trial: FrozenTrial) -> bool:
    """Whether `trial` is one of the study's trials: not failed (its retry is) and not surplus."""
    return trial.state != TrialState.FAIL and not trial.user_attrs.get(SURPLUS, False)


def _claimed_before(trials: list[FrozenTrial], number: int) -> int:
    """Trials numbered below `number` that are or will be run (finished, running, or waiting)."""
    return sum(_counts(t) for t in trials if t.number < number)


def trial_folder(candidates: Path, number: int) -> Path:
    return candidates / f"trial-{number:04d}"


class Worker:
    """Runs trials of `study` in this process; `current` is the trial it is running, if any."""

    def __init__(self, study: optuna.Study, ctx: SearchContext, candidates: Path, limit_ms: float,
                 clock: Callable[[], float] = time.monotonic):
        self.study, self.ctx, self.candidates, self.limit_ms, self.clock = study, ctx, candidates, limit_ms, clock
        self.current: int | None = None
        self.durations: list[float] = []

    def objective(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        # Parameters first: a trial that names its worker has them, so a dead worker's is retried as it was.
        candidate = suggest_candidate(trial, self.ctx.settings)
        trial.set_user_attr(WORKER, worker_id())
        if _claimed_before(self.study.get_trials(deepcopy=False), trial.number) >= self.ctx.settings.trials:
            # Another worker took the last trial between this one's check and its start.
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned("surplus: the study already holds enough trials")
        try:
            score = score_candidate(candidate, self.ctx, trial_folder(self.candidates, trial.number),
                                    source=f"lpdet search trial {trial.number}")
        except CandidateRejected as e:
            trial.set_user_attr("rejected", str(e))
            raise optuna.TrialPruned(str(e)) from None
        trial.set_user_attr(LATENCY, score.latency_ms)
        set_latency_constraint(trial, score.latency_ms, self.limit_ms)
        trial.set_user_attr("latency_interval_ms", score.latency_interval_ms)
        trial.set_user_attr("p90_ms", score.p90_ms)
        trial.set_user_attr(AP, score.select_ap)
        trial.set_user_attr("select_ap50", score.select_ap50)
        return score.select_ap

    def run(self, settings: SearchSettings, *, progress: bool = True) -> int:
        """Run trials until the study is done or the time budget is spent; returns how many ran here."""
        start = self.clock()
        deadline = start + settings.time_budget_min * 60 if settings.time_budget_min > 0 else None
        bar = progress_bar(total=settings.trials, enabled=progress, desc="search", unit="trial")
        ran = 0
        try:
            while True:
                trials = self.study.get_trials(deepcopy=False)
                states = [t.state for t in trials]
                done = sum(_counts(t) and t.state in DONE for t in trials)
                self._show(bar, trials, done, settings.trials, deadline)
                running, waiting = states.count(TrialState.RUNNING), states.count(TrialState.WAITING)
                if done >= settings.trials:
                    break
                expected = sum(self.durations) / len(self.durations) if self.durations else 0.0
                if deadline is not None and self.clock() + expected > deadline:
                    log.info("search: the time budget (--time-budget-min %g) is spent; %d trials done",
                             settings.time_budget_min, done)
                    break
                if done + running >= settings.trials and not waiting:
                    # Other workers run the last trials: wait for them (or for a dead one's to come back).
                    time.sleep(POLL_S)
                    recover_dead_workers(self.study)
                    continue
                self._one_trial()
                ran += 1
        finally:
            bar.close()
        return ran

    def _one_trial(self) -> None:
        began = self.clock()
        try:
            self.study.optimize(self.objective, n_trials=1, gc_after_trial=False)
        except KeyboardInterrupt:
            self._requeue_interrupted()
            raise
        finally:
            self.current = None
        self.durations.append(self.clock() - began)

    def _requeue_interrupted(self) -> None:
        """Optuna failed the trial Ctrl-C interrupted; run its parameters again next time."""
        if self.current is None:
            return
        trial = self.study.get_trials(deepcopy=False)[self.current]
        if trial.state == TrialState.FAIL:
            retry(self.study, trial)

    def _show(self, bar, trials, done: int, total: int, deadline: float | None) -> None:
        feasible = [t for t in trials if is_feasible(t, self.limit_ms)]
        best = max(feasible, key=lambda t: t.user_attrs[AP], default=None)
        now = self.clock()
        if deadline is not None:
            left = max(deadline - now, 0.0)
        else:
            mean = sum(self.durations) / len(self.durations) if self.durations else None
            left = None if mean is None else mean * max(total - done, 0)
        bar.n = min(done, total)
        bar.set_postfix(best="none fits yet" if best is None else
                        f"AP {best.user_attrs[AP]:.3f} @ {best.user_attrs[LATENCY]:.2f} ms",
                        left="?" if left is None else f"{left / 60:.1f} min", refresh=False)
        bar.refresh()
