import errno
import json
import pickle

import pytest
import torch

import lpdet.models.checkpoint_format as checkpoint
from lpdet.errors import LpdetError
from lpdet.models.config import ModelConfig
from lpdet.models.registry import build_detector
from lpdet.models.checkpoint_format import (load_checkpoint, recover_interrupted_saves, resolve_checkpoint,
                                            save_checkpoint)
from lpdet.deploy.runtime import load_detector

CONFIG = ModelConfig(arch="mobilenet_v1_ssdlite", num_classes=3, width=0.25, resolution=64)


def _save(path, model, **kwargs):
    return save_checkpoint(path, model=model, model_config=CONFIG, class_names=["a", "b", "c"],
                           category_ids=[1, 5, 9], **kwargs)


def test_round_trip_with_optimizer_and_rng(tmp_path):
    model = build_detector(CONFIG)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 64, 64))[0].sum().backward()
    optimizer.step()
    torch.manual_seed(123)
    _save(tmp_path / "last", model, train_state={"global_step": 7}, optimizer=optimizer)
    expected_random = torch.rand(3)

    ckpt = load_checkpoint(tmp_path / "last", with_optimizer=True)
    assert ckpt.model_config == CONFIG and ckpt.category_ids == [1, 5, 9]
    assert ckpt.train_state["global_step"] == 7
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model_state[key], value)

    fresh = build_detector(CONFIG)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9)
    checkpoint.restore_optimizer(fresh_optimizer, ckpt)
    assert fresh_optimizer.param_groups[0]["lr"] == 0.1
    saved, restored = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert saved.keys() == restored.keys()
    for index in saved:
        assert torch.equal(saved[index]["momentum_buffer"], restored[index]["momentum_buffer"])
    assert torch.equal(torch.rand(3), expected_random)  # the RNG continues where it was saved


def test_run_directory_resolves_to_best_then_last(tmp_path):
    model = build_detector(CONFIG)
    _save(tmp_path / "last", model)
    assert resolve_checkpoint(tmp_path) == tmp_path / "last"
    _save(tmp_path / "best", model)
    assert resolve_checkpoint(tmp_path) == tmp_path / "best"
    assert resolve_checkpoint(tmp_path / "best" / "model.safetensors") == tmp_path / "best"
    detector, ckpt = load_detector(tmp_path)
    assert detector.config == CONFIG and not detector.training


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = build_detector(CONFIG)
    _save(tmp_path / "last", model, train_state={"global_step": 1})

    def failing_save(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", failing_save)
    with pytest.raises(LpdetError, match=r"last: could not save the checkpoint \(ENOSPC: No space left on device\); "
                                         r"the previous checkpoint there is unchanged"):
        _save(tmp_path / "last", model, train_state={"global_step": 2})
    assert load_checkpoint(tmp_path / "last").train_state["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no temporary leftovers


def test_interrupted_swap_falls_back_to_old_copy(tmp_path):
    model = build_detector(CONFIG)
    _save(tmp_path / "last", model, train_state={"global_step": 4})
    (tmp_path / "last").rename(tmp_path / "last.old")  # crashed between the two renames
    assert load_checkpoint(tmp_path / "last").train_state["global_step"] == 4


def test_every_file_and_the_folder_are_fsynced_before_the_swap(tmp_path, monkeypatch):
    model = build_detector(CONFIG)
    events = []
    real_fsync, real_swap = checkpoint._fsync, checkpoint._swap_in
    monkeypatch.setattr(checkpoint, "_fsync", lambda path: (events.append(("fsync", path.name)), real_fsync(path)))
    monkeypatch.setattr(checkpoint, "_swap_in", lambda new, path: (events.append(("swap", path.name)),
                                                                     real_swap(new, path)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _save(tmp_path / "last", model, optimizer=optimizer)
    swap = events.index(("swap", "last"))
    synced_before = {name for kind, name in events[:swap] if kind == "fsync"}
    assert {"model.safetensors", "optimizer.safetensors", "checkpoint.json"} <= synced_before
    assert any(name.startswith(".last.tmp-") for name in synced_before)  # the folder itself
    assert ("fsync", tmp_path.name) in events[swap:]  # the renames, after the swap


def test_a_save_after_a_killed_swap_never_deletes_the_only_copy(tmp_path, monkeypatch):
    model = build_detector(CONFIG)
    _save(tmp_path / "last", model, train_state={"global_step": 4})
    (tmp_path / "last").rename(tmp_path / "last.old")  # killed between the two renames
    real_replace = checkpoint.os.replace
    seen = []

    def replace_checking_a_copy_exists(src, dst):
        seen.append(load_checkpoint(tmp_path / "last").train_state["global_step"])  # readable at every rename
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace_checking_a_copy_exists)
    _save(tmp_path / "last", model, train_state={"global_step": 6})
    assert seen == [4]
    assert load_checkpoint(tmp_path / "last").train_state["global_step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_recover_interrupted_saves_tidies_only_what_a_killed_save_left(tmp_path):
    model = build_detector(CONFIG)
    _save(tmp_path / "best", model, train_state={"global_step": 3})
    (tmp_path / "best").rename(tmp_path / "best.old")  # killed mid-swap
    killed = tmp_path / ".last.tmp-abc123"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half a file")
    (killed / ".tmpXYZ").write_bytes(b"safetensors' own temporary file")
    foreign = tmp_path / ".notes.tmp-keep"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("a user's file")
    lines = recover_interrupted_saves(tmp_path)
    assert len(lines) == 3 and any("removed" in line and ".last.tmp-abc123" in line for line in lines)
    assert any(line.startswith("left") and ".notes.tmp-keep" in line for line in lines)
    assert not killed.exists() and (foreign / "mine.txt").read_text() == "a user's file"
    assert load_checkpoint(tmp_path / "best").path == tmp_path / "best"
    assert recover_interrupted_saves(tmp_path / "missing") == []


@pytest.mark.parametrize("make_bad", ["missing", "pickle", "random_dir", "bad_json", "bad_weights"])
def test_things_that_are_not_checkpoints_give_clear_errors(tmp_path, make_bad):
    target = tmp_path / "thing"
    if make_bad == "pickle":
        target.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif make_bad == "random_dir":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
    elif make_bad in ("bad_json", "bad_weights"):
        _save(target, build_detector(CONFIG))
        if make_bad == "bad_json":
            (target / "checkpoint.json").write_text("{not json")
        else:
            (target / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(LpdetError, match="thing"):
        load_detector(target)


def test_checkpoint_json_is_plain_readable_metadata(tmp_path):
    _save(tmp_path / "best", build_detector(CONFIG), train_state={"best_ap": 0.5})
    meta = json.loads((tmp_path / "best" / "checkpoint.json").read_text())
    assert meta["model"]["arch"] == "mobilenet_v1_ssdlite" and meta["class_names"] == ["a", "b", "c"]


class _FakeCuda:
    """torch.cuda on a machine with two devices, their generators as plain byte tensors."""

    def __init__(self, initialized=True):
        self.states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
        self.initialized, self.set_calls = initialized, []

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state",
                            lambda state, device: self.set_calls.append((device, state.clone())))


def test_cuda_rng_states_are_saved_and_restored_when_cuda_was_used(tmp_path, monkeypatch):
    model = build_detector(CONFIG)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cuda = _FakeCuda()
    cuda.install(monkeypatch)
    _save(tmp_path / "last", model, train_state={"global_step": 1}, optimizer=optimizer)
    ckpt = load_checkpoint(tmp_path / "last", with_optimizer=True)
    assert sorted(k for k in ckpt.optimizer_tensors if k.startswith("rng.")) == ["rng.cuda.0", "rng.cuda.1",
                                                                                 "rng.torch"]
    saved = [s.clone() for s in cuda.states]
    cuda.states = [torch.zeros(16, dtype=torch.uint8)] * 2  # the generators move on
    checkpoint.restore_optimizer(torch.optim.SGD(build_detector(CONFIG).parameters(), lr=0.5), ckpt)
    assert [d for d, _ in cuda.set_calls] == [0, 1]
    assert all(torch.equal(state, saved[d]) for d, state in cuda.set_calls)


def test_an_unused_cuda_is_not_started_and_a_cpu_resume_ignores_cuda_states(tmp_path, monkeypatch):
    model = build_detector(CONFIG)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cuda = _FakeCuda(initialized=False)  # a CPU run on a machine that has CUDA
    cuda.install(monkeypatch)
    _save(tmp_path / "cpu_run", model, optimizer=optimizer)
    assert "rng.cuda.0" not in load_checkpoint(tmp_path / "cpu_run", with_optimizer=True).optimizer_tensors
    cuda.initialized = True
    _save(tmp_path / "cuda_run", model, optimizer=optimizer)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # resumed on a machine without CUDA
    checkpoint.restore_optimizer(optimizer, load_checkpoint(tmp_path / "cuda_run", with_optimizer=True))
    assert cuda.set_calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_cuda_generator_continues_where_it_was_saved(tmp_path):
    model = build_detector(CONFIG)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.cuda.manual_seed_all(7)
    torch.rand(5, device="cuda")  # not at its seed any more
    _save(tmp_path / "last", model, optimizer=optimizer)
    expected = torch.rand(5, device="cuda")
    torch.cuda.manual_seed_all(99)
    checkpoint.restore_optimizer(optimizer, load_checkpoint(tmp_path / "last", with_optimizer=True))
    assert torch.equal(torch.rand(5, device="cuda"), expected)
