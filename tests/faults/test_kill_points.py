"""kill -9 at seeded random points of float and QAT training, then resume: the final weights are
bit-identical to the uninterrupted run's.

The points: before any of the run's 6 steps (`step:N`), inside either validation (`val:E`), and
inside a `last` checkpoint save at each global step it happens (after the weights file is written,
or between the two renames of the swap). Which ones run is drawn with a fixed seed, so a failure
names a point that reproduces.
"""

import random
import signal

import pytest

from lpdet.models.checkpoint_format import load_checkpoint
from tests.faults.processes import Process, assert_bit_identical, final_weights, train_args

pytestmark = pytest.mark.faults

SEED = 15
# `last` is saved at steps 2 and 4 (--checkpoint-every 2), 3 and 6 (epoch ends); a swap needs a previous one
POINTS = ([f"step:{n}" for n in range(6)] + ["val:1", "val:2"] + [f"save:{n}:files" for n in (2, 3, 4, 6)]
          + [f"save:{n}:swap" for n in (3, 4, 6)])
FLOAT_POINTS = random.Random(SEED).sample(POINTS, 7)
QAT_POINTS = random.Random(SEED + 1).sample(POINTS, 5)


def _kill_and_resume(args, run, tmp_path, launcher, point):
    process = Process(args, tmp_path, at=point, mode="freeze", launcher=launcher)
    process.wait_paused()
    process.signal(signal.SIGKILL)
    assert process.finish() == -signal.SIGKILL
    if (run / "last").exists() or (run / "last.old").exists():
        load_checkpoint(run, with_optimizer=False)  # whatever was on disk at the kill is loadable
        resume = Process(["train", "--resume", str(run), "--quiet"], tmp_path, launcher=launcher)
    else:  # killed before the first checkpoint: nothing to resume, the same command starts again
        resume = Process(args, tmp_path, launcher=launcher)
    assert resume.finish() == 0, resume.stderr
    return final_weights(run)


@pytest.mark.parametrize("point", FLOAT_POINTS)
def test_float_run_killed_at_a_random_point_resumes_bit_for_bit(point, fault_data, float_reference, launcher,
                                                                 tmp_path):
    run = tmp_path / "run"
    resumed = _kill_and_resume(train_args(fault_data, run), run, tmp_path, launcher, point)
    assert_bit_identical(resumed, final_weights(float_reference))


@pytest.mark.parametrize("point", QAT_POINTS)
def test_qat_run_killed_at_a_random_point_resumes_bit_for_bit(point, fault_data, float_reference, qat_reference,
                                                               launcher, tmp_path):
    run = tmp_path / "run"
    args = train_args(fault_data, run, qat_init=float_reference / "last")
    resumed = _kill_and_resume(args, run, tmp_path, launcher, point)
    assert_bit_identical(resumed, final_weights(qat_reference))
