"""SIGTERM / Ctrl-C / a second signal / kill -9 inside a checkpoint save, on real `lpdet train` processes.

The SIGTERM test starts cold `python -m lpdet` processes, as a user would; the others fork theirs
from the session's `launcher` (the same code, without paying the imports again)."""

import signal

import pytest

from lpdet.cli import main
from lpdet.models.checkpoint_format import load_checkpoint
from tests.faults.processes import (Process, assert_bit_identical, final_weights, resume_command, run_lpdet,
                                    train_args)

pytestmark = pytest.mark.faults


def _interrupt_then_resume(args, run, tmp_path, signum, exit_status, launcher=None, whole_group=False):
    """Stop `lpdet ARGS` with `signum` just before step 3 (mid-epoch 2); resume with the printed command.

    `whole_group`: the signal goes to the process group, DataLoader workers included, as `timeout`,
    a batch scheduler or a terminal's Ctrl-C sends it."""
    process = Process(args, tmp_path, at="step:3", mode="hold", launcher=launcher, own_group=whole_group)
    process.wait_paused()
    (process.signal_group if whole_group else process.signal)(signum)
    assert process.finish() == exit_status, process.stderr
    assert "Traceback" not in process.stderr, process.stderr
    name = signal.Signals(signum).name
    assert f"{name} received: saving a checkpoint at the end of this step" in process.stderr
    assert f"interrupted: stopped by {name} at step 4; saved {run / 'last'}" in process.stderr
    state = load_checkpoint(run / "last", with_optimizer=True).train_state
    # checkpoint_every 100: only the stop wrote this step-4 checkpoint (1 step into epoch 2)
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (4, 1, 1)
    assert resume_command(process.stderr) == ["train", "--resume", str(run)]
    run_lpdet(resume_command(process.stderr), tmp_path, launcher)
    return final_weights(run)


def test_sigterm_saves_the_current_step_and_the_printed_resume_matches_an_uninterrupted_run(
        fault_data, float_reference, tmp_path):
    run = tmp_path / "run"
    resumed = _interrupt_then_resume(train_args(fault_data, run, checkpoint_every=100), run, tmp_path,
                                     signal.SIGTERM, 143)
    assert_bit_identical(resumed, final_weights(float_reference))


@pytest.mark.parametrize("signum, exit_status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_whole_process_group_with_a_dataloader_worker_still_saves_and_resumes(
        signum, exit_status, fault_data, float_reference, launcher, tmp_path):
    """The worker gets the signal too; it leaves the stop to the main process instead of dying under
    it (which made the main process fail with "DataLoader worker ... is killed by signal")."""
    run = tmp_path / "run"
    args = train_args(fault_data, run, checkpoint_every=100, workers=1)
    resumed = _interrupt_then_resume(args, run, tmp_path, signum, exit_status, launcher, whole_group=True)
    assert_bit_identical(resumed, final_weights(float_reference))  # the batches do not depend on the workers


def test_ctrl_c_in_a_qat_run_across_its_freeze_phases_resumes_bit_for_bit(
        fault_data, float_reference, qat_reference, launcher, tmp_path):
    run = tmp_path / "run"
    args = train_args(fault_data, run, qat_init=float_reference / "last", checkpoint_every=100)
    resumed = _interrupt_then_resume(args, run, tmp_path, signal.SIGINT, 130, launcher)
    assert_bit_identical(resumed, final_weights(qat_reference))
    assert load_checkpoint(run / "last").model_config.quantization == "qat"


def test_a_second_signal_exits_at_once_and_keeps_the_previous_checkpoint(fault_data, launcher, tmp_path):
    run = tmp_path / "run"
    process = Process(train_args(fault_data, run), tmp_path, at="step:5", mode="freeze", launcher=launcher)
    process.wait_paused()  # frozen inside step 5: the first signal cannot be acted on
    process.signal(signal.SIGTERM)
    process.wait_until(lambda: "SIGTERM received" in process.stderr, "the first signal's message")
    process.signal(signal.SIGTERM)
    assert process.finish() == 143
    assert "SIGTERM again: exiting at once, without a checkpoint" in process.stderr
    assert load_checkpoint(run / "last", with_optimizer=True).train_state["global_step"] == 4


@pytest.mark.parametrize("phase", ["files", "swap"])
def test_kill_9_inside_a_checkpoint_save_leaves_the_previous_one_loadable(
        fault_data, float_reference, launcher, tmp_path, phase, caplog):
    run = tmp_path / "run"
    process = Process(train_args(fault_data, run), tmp_path, at=f"save:4:{phase}", mode="freeze", launcher=launcher)
    process.wait_paused()
    process.signal(signal.SIGKILL)
    assert process.finish() == -signal.SIGKILL
    # the end-of-epoch-1 checkpoint (step 3) is what a reader sees, mid-save or mid-swap
    assert load_checkpoint(run, with_optimizer=False).train_state["global_step"] == 3
    assert load_checkpoint(run / "last", with_optimizer=True).train_state["global_step"] == 3
    leftovers = sorted(p.name for p in run.iterdir() if p.name.startswith(".last.tmp-") or p.name == "last.old")
    assert leftovers and (phase == "swap") == ("last.old" in leftovers)

    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    expected = "removed" if phase == "files" else "restored"
    assert any(expected in r.getMessage() and "did not finish" in r.getMessage() for r in caplog.records)
    assert not [p for p in run.iterdir() if p.name.startswith(".last.tmp-") or p.name.endswith(".old")]
    assert_bit_identical(final_weights(run), final_weights(float_reference))
