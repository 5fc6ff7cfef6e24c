import csv

import pytest
import torch

import lpdet.train.loop as loop
import lpdet.train.tasks as tasks
from lpdet.deploy.export import export_onnx
from lpdet.deploy.model import read_onnx_metadata
from lpdet.deploy.runtime import load_detector
from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.models.config import is_qat
from lpdet.train.loop import train
from tests.helpers import tiny_synth, tiny_train_config


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory):
    return tiny_synth(tmp_path_factory.mktemp("synth"))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_training_writes_logs_and_checkpoints(data_yaml, tmp_path):
    cfg = tiny_train_config(data_yaml, tmp_path / "run")
    best = train(cfg, progress=False)
    run = tmp_path / "run"
    assert best == run / "best"
    steps = _rows(run / "metrics.csv")
    assert [int(r["step"]) for r in steps] == list(range(6))  # 12 images / batch 4 × 2 epochs
    assert all(float(r["loss"]) > 0 for r in steps)
    # warm-up is capped at a fifth of the 6-step run (1 step), so step 0 already runs at the peak
    assert float(steps[0]["lr"]) == pytest.approx(cfg.lr)
    val = _rows(run / "val.csv")
    assert [int(r["epoch"]) for r in val] == [1, 2]
    assert (run / "config.yaml").is_file() and any((run / "tb").iterdir())
    last = load_checkpoint(run / "last", with_optimizer=True)
    assert last.train_state["epoch"] == 2 and last.train_state["global_step"] == 6
    assert last.model_config.resolution == 96 and len(last.class_names) == last.model_config.num_classes


def test_existing_run_is_not_overwritten(data_yaml, tmp_path):
    cfg = tiny_train_config(data_yaml, tmp_path / "run", epochs=1)
    train(cfg, progress=False)
    with pytest.raises(LpdetError, match="--resume"):
        train(tiny_train_config(data_yaml, tmp_path / "run", epochs=1), progress=False)


def test_resume_after_interruption_matches_uninterrupted_run(data_yaml, tmp_path, monkeypatch):
    train(tiny_train_config(data_yaml, tmp_path / "full"), progress=False)

    real_lr_at = loop.lr_at

    def interrupt_at_step_3(step, **kwargs):
        if step == 5:  # mid-epoch 2 (3 steps per epoch), after the step-4 checkpoint
            raise KeyboardInterrupt
        return real_lr_at(step, **kwargs)

    monkeypatch.setattr(loop, "lr_at", interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_train_config(data_yaml, tmp_path / "cut"), progress=False)
    monkeypatch.setattr(loop, "lr_at", real_lr_at)
    cut = load_checkpoint(tmp_path / "cut" / "last").train_state
    assert (cut["global_step"], cut["epoch"], cut["step_in_epoch"]) == (4, 1, 1)

    train(tiny_train_config(data_yaml, tmp_path / "cut"), resume=True, progress=False)
    full = load_checkpoint(tmp_path / "full" / "last").model_state
    resumed = load_checkpoint(tmp_path / "cut" / "last").model_state
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    assert [r["step"] for r in _rows(tmp_path / "cut" / "metrics.csv")] == [str(s) for s in range(6)]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_yaml, tmp_path, monkeypatch):
    real_loss = tasks.multibox_loss
    calls = {"n": 0}

    def loss_turning_nan(*args, **kwargs):
        calls["n"] += 1
        losses = real_loss(*args, **kwargs)
        if calls["n"] == 4:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(tasks, "multibox_loss", loss_turning_nan)
    with pytest.raises(LpdetError, match="nan at step 3"):
        train(tiny_train_config(data_yaml, tmp_path / "run"), progress=False)
    last = load_checkpoint(tmp_path / "run" / "last")
    assert last.train_state["global_step"] == 3  # the end-of-epoch-1 checkpoint
    assert all(torch.isfinite(t).all() for t in last.model_state.values())


def test_init_transfers_weights_across_resolution(data_yaml, tmp_path):
    train(tiny_train_config(data_yaml, tmp_path / "r96", epochs=1), progress=False)
    cfg = tiny_train_config(data_yaml, tmp_path / "r128", epochs=1, resolution=128, init=tmp_path / "r96" / "last",
                            lr=1e-9, warmup_steps=0, momentum=0.0)
    train(cfg, progress=False)
    source = load_checkpoint(tmp_path / "r96" / "last").model_state
    target = load_checkpoint(tmp_path / "r128" / "last").model_state
    conv_weights = [k for k in source if k.endswith("weight") and source[k].ndim == 4]
    assert conv_weights
    # lr ~0 and no momentum: every conv weight stays what --init copied in
    for key in conv_weights:
        assert torch.allclose(source[key], target[key], atol=1e-6), key


def test_init_from_a_different_architecture_is_refused(data_yaml, tmp_path):
    train(tiny_train_config(data_yaml, tmp_path / "v2", epochs=1), progress=False)
    cfg = tiny_train_config(data_yaml, tmp_path / "v1", arch="mobilenet_v1_ssd", init=tmp_path / "v2" / "last")
    with pytest.raises(LpdetError, match="--init"):
        train(cfg, progress=False)


def _qat_config(data_yaml, out, init):
    # 6 steps; BN freezes after step 3, observers after step 5: the resume below crosses the second
    return tiny_train_config(data_yaml, out, epochs=2, qat=True, init=init, qat_freeze_bn_after=3,
                             qat_freeze_observers_after=5)


def test_qat_run_from_float_init_resumes_and_exports_fully_int8(data_yaml, tmp_path, monkeypatch):
    import collections

    import onnx

    from lpdet.deploy.runtime import onnx_session
    from lpdet.quant.fake_quant import QConv2d

    train(tiny_train_config(data_yaml, tmp_path / "float", epochs=1), progress=False)
    init = tmp_path / "float" / "last"
    train(_qat_config(data_yaml, tmp_path / "full", init), progress=False)

    real_lr_at = loop.lr_at

    def interrupt_at_step_5(step, **kwargs):
        if step == 5:  # after the step-4 checkpoint: BN already frozen, observers not yet
            raise KeyboardInterrupt
        return real_lr_at(step, **kwargs)

    monkeypatch.setattr(loop, "lr_at", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(_qat_config(data_yaml, tmp_path / "cut", init), progress=False)
    monkeypatch.setattr(loop, "lr_at", real_lr_at)
    assert load_checkpoint(tmp_path / "cut" / "last").train_state["global_step"] == 4
    train(_qat_config(data_yaml, tmp_path / "cut", init), resume=True, progress=False)

    full = load_checkpoint(tmp_path / "full" / "last").model_state
    resumed = load_checkpoint(tmp_path / "cut" / "last").model_state
    assert full.keys() == resumed.keys()
    for key in full:  # weights, BN statistics, observer ranges and freeze flags alike
        assert torch.equal(full[key], resumed[key]), key

    detector, ckpt = load_detector(tmp_path / "cut")
    assert is_qat(ckpt.model_config) and is_qat(detector.config)
    onnx_path = export_onnx(detector, tmp_path / "model.onnx")
    assert read_onnx_metadata(onnx_path)["quantization"] == "int8-qat"
    onnx_session(onnx_path, threads=1, optimized_model=tmp_path / "opt.onnx")
    optimized = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert optimized["QLinearConv"] == sum(isinstance(m, QConv2d) for m in detector.modules()) > 0
    assert not [op for op in optimized if "Conv" in op and op != "QLinearConv"], optimized  # no float conv left
    # a float --init into a QAT run is fine; a QAT --init into a float run is refused
    with pytest.raises(LpdetError, match="--qat"):
        train(tiny_train_config(data_yaml, tmp_path / "back", epochs=1, init=tmp_path / "cut" / "last"),
              progress=False)


def test_a_non_finite_gradient_skips_the_update(data_yaml, tmp_path, monkeypatch, caplog):
    real = loop._gradients_finite
    calls = {"n": 0}

    def finite_except_the_second(model):
        calls["n"] += 1
        return real(model) and calls["n"] != 2

    monkeypatch.setattr(loop, "_gradients_finite", finite_except_the_second)
    train(tiny_train_config(data_yaml, tmp_path / "run", epochs=1), progress=False)
    assert "step 1: non-finite gradient with a finite loss; update skipped" in caplog.text
    assert load_checkpoint(tmp_path / "run" / "last").train_state["global_step"] == 3

    monkeypatch.setattr(loop, "_gradients_finite", lambda model: False)
    monkeypatch.setattr(loop, "MAX_SKIPPED_STEPS", 2)
    with pytest.raises(LpdetError, match="2 steps in a row had non-finite gradients"):
        train(tiny_train_config(data_yaml, tmp_path / "run2", epochs=1), progress=False)


def test_bf16_training_runs_and_saves_fp32_weights(data_yaml, tmp_path):
    if not loop._use_bf16("auto", torch.device("cpu"), qat=False):
        pytest.skip("this CPU has no native bf16")
    train(tiny_train_config(data_yaml, tmp_path / "run", epochs=1, precision="bf16"), progress=False)
    state = load_checkpoint(tmp_path / "run" / "last").model_state
    assert all(t.dtype != torch.bfloat16 for t in state.values())
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_batch_whose_images_all_fail_to_load_still_counts_as_a_step(tmp_path, monkeypatch, caplog):
    from lpdet.data.loader import EpochSampler

    data_yaml = tiny_synth(tmp_path / "data")
    real_make_loader = loop.make_loader
    lost = []

    def loader_losing_a_batch(dataset, batch_size, *, epoch, seed, **kwargs):
        if epoch == 1 and not lost:  # every image of epoch 2's second batch disappears
            order = EpochSampler(len(dataset), shuffle=True, seed=seed, epoch=epoch).order()
            for index in order[batch_size:2 * batch_size]:
                lost.append(dataset.image_path(index))
                lost[-1].unlink()
        return real_make_loader(dataset, batch_size, epoch=epoch, seed=seed, **kwargs)

    monkeypatch.setattr(loop, "make_loader", loader_losing_a_batch)
    train(tiny_train_config(data_yaml, tmp_path / "run"), progress=False)
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert (rows[4]["skipped_images"], rows[4]["loss"]) == ("4", "")
    assert all(r["loss"] for i, r in enumerate(rows) if i != 4)
    assert "step 4: none of the batch's 4 images could be read; no update" in caplog.text
    assert load_checkpoint(tmp_path / "run" / "last").train_state["global_step"] == 6
    assert len(lost) == 4 and str(lost[0]) in caplog.text


def test_limit_train_batches_ends_each_epoch_early_and_resumes_exactly(data_yaml, tmp_path, monkeypatch):
    # 12 images / batch 4 = 3 batches per epoch; the limit keeps 2 of each epoch's shuffle
    cfg = tiny_train_config(data_yaml, tmp_path / "full", limit_train_batches=2, epochs=3)
    train(cfg, progress=False)
    steps = _rows(tmp_path / "full" / "metrics.csv")
    assert [(int(r["step"]), int(r["epoch"])) for r in steps] == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2)]
    full = load_checkpoint(tmp_path / "full" / "last")
    assert full.train_state["global_step"] == 6 and full.train_state["epoch"] == 3

    real_lr_at = loop.lr_at

    def interrupt_mid_epoch(step, **kwargs):
        if step == 3:  # second batch of epoch 2, after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_lr_at(step, **kwargs)

    monkeypatch.setattr(loop, "lr_at", interrupt_mid_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_train_config(data_yaml, tmp_path / "cut", limit_train_batches=2, epochs=3), progress=False)
    monkeypatch.setattr(loop, "lr_at", real_lr_at)
    train(tiny_train_config(data_yaml, tmp_path / "cut"), resume=True, progress=False)
    cut = load_checkpoint(tmp_path / "cut" / "last")
    assert cut.train_state["global_step"] == 6
    for key, value in full.model_state.items():
        assert torch.equal(value, cut.model_state[key]), key


def test_limit_train_batches_must_not_be_negative(data_yaml, tmp_path):
    with pytest.raises(LpdetError, match="--limit-train-batches"):
        train(tiny_train_config(data_yaml, tmp_path / "run", limit_train_batches=-1), progress=False)
