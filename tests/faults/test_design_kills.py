"""kill -9 of a real `lpdet design` at seeded random points inside its trials: each kill loses at most
the trial under way.

One design (tiny settings) is killed again and again, each time at a later point: before a
training step, at the start of a trial (its spec written, no work done) or at its end (its work
done, its result not yet recorded), in the float and QAT trainings and the benchmark after the
quantization table. Each next `lpdet design` keeps every trial that had finished byte for byte
(cached, not redone), finishes the one that was killed (a training trial resumes from its last
checkpoint, to weights bit-identical to an uninterrupted training of the same config; any other
trial is redone) and goes on, up to the first trial after the last kill point, where the test ends
it (the rest of the flow is the same code as the uninterrupted `tests/design/test_flow.py` run, and
would double this test's time). The points are `trial:NAME:PHASE` of `tests.faults.pausing_lpdet`.
"""

import json
import random
import signal
from dataclasses import replace

import pytest

from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.serialize import to_dict
from lpdet.train.config import load_train_config
from lpdet.train.loop import train
from tests.design.test_flow import tiny_settings
from tests.faults import processes
from tests.faults.processes import Process, assert_bit_identical, final_weights
from tests.helpers import tiny_synth

pytestmark = pytest.mark.faults

SEED = 15
# in the order the tiny design reaches them (each training: 3 steps, a checkpoint after every one)
TRAININGS = ("float-r128", "qat-r128")
POINTS = [f"trial:{name}:{phase}" for name in TRAININGS
          for phase in ("start", "step:1", "step:2", "end")] + ["trial:quant-compare:start",
                                                                "trial:quant-compare:end"]
KILL_POINTS = sorted(random.Random(SEED).sample(POINTS, 7), key=POINTS.index)
LAST = "trial:noft-r128-export:start"  # the first trial after them: the last process is ended there


def _finished(trials) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in trials.glob("*/result.json")}


def test_design_killed_again_and_again_loses_at_most_the_trial_under_way(launcher, tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "TIMEOUT_S", 600)  # the quantization table alone is a 34-second trial
    data = tiny_synth(tmp_path / "data", n_train=14, n_val=4)
    settings = replace(tiny_settings(), training=replace(tiny_settings().training, checkpoint_every=1))
    settings_file = tmp_path / "design_settings.json"
    settings_file.write_text(json.dumps(to_dict(settings)))
    out = tmp_path / "design"
    trials = out / "trials"
    args = ["design", "--data", str(data), "--budget-ms", "10000", "--threads", "1", "--out", str(out)]
    kept: dict[str, bytes] = {}
    killed, killed_trainings = None, []
    for point in [*KILL_POINTS, LAST]:
        process = Process(args, tmp_path, at=point, mode="freeze", launcher=launcher, design_settings=settings_file)
        process.wait_paused()
        now = _finished(trials)
        redone = [name for name in kept if now.get(name) != kept[name]]
        assert not redone, f"{point}: trials finished before the last kill were redone: {redone}"
        if killed and killed != point.split(":")[1]:  # the trial killed last time has finished now
            assert killed in now, f"{point}: {killed} was not finished after its kill"
        process.signal(signal.SIGKILL)
        assert process.finish() == -signal.SIGKILL
        killed, phase = point.split(":")[1], point.split(":", 2)[2]
        assert killed not in _finished(trials), point
        if phase.startswith("step:"):  # checkpoint_every 1: the run's `last` is at the step it was killed before
            step = int(phase.split(":")[1])
            assert load_checkpoint(trials / killed / "run", with_optimizer=False).train_state["global_step"] == step
        if killed in TRAININGS and phase != "start" and killed not in killed_trainings:
            killed_trainings.append(killed)
        kept = _finished(trials)

    for name in killed_trainings:  # resumed from the kill's checkpoint: as if never killed
        cfg = load_train_config(trials / name / "run" / "config.yaml")
        train(replace(cfg, out=tmp_path / "uninterrupted" / name), progress=False)
        assert_bit_identical(final_weights(trials / name / "run"), final_weights(tmp_path / "uninterrupted" / name))
    assert killed_trainings
    print(f"design killed at {len(KILL_POINTS)} points ({', '.join(KILL_POINTS)}); "
          f"{len(killed_trainings)} killed trainings resumed bit for bit")
