"""Bad inputs met mid-run: damaged images and decompression bombs are counted skips, a full disk during
a checkpoint save keeps the previous checkpoint and says so in one line, a damaged annotation file is
named, and a DataLoader worker that hangs or dies is one error line naming the image it was reading."""

import errno
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import PIL.Image
import pytest

import lpdet.models.checkpoint_format as checkpoint_format
from lpdet.cli import main
from lpdet.data import worker_watch
from lpdet.data.coco import CocoDetection
from lpdet.data.loader import EpochSampler
from lpdet.data.spec import resolve_dataset
from lpdet.models.checkpoint_format import load_checkpoint
from tests.faults.processes import ROOT, Process, assert_bit_identical, final_weights, train_args

pytestmark = pytest.mark.faults


def _damage(path, how):
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # "garbage"
        path.write_bytes(b"\xff\xd8 this was a JPEG" * 50)


def test_images_damaged_mid_run_are_counted_skips_and_an_empty_batch_still_counts(fault_data, launcher, tmp_path):
    data_yaml = shutil.copytree(fault_data.parent, tmp_path / "data") / fault_data.name
    run = tmp_path / "run"
    process = Process(train_args(data_yaml, run), tmp_path, at="step:3", mode="wait", launcher=launcher)
    process.wait_paused()  # epoch 2 is under way; its first batch is already loaded
    spec = resolve_dataset(str(data_yaml))
    train_set = CocoDetection(spec.train.annotations, spec.train.images)
    order = EpochSampler(len(train_set), shuffle=True, seed=0, epoch=1).order()
    # epoch 2's second batch loses every image, its third batch one
    damaged = list(zip([train_set.image_path(i) for i in order[4:9]],
                       ["deleted", "truncated", "empty", "garbage", "truncated"]))
    for path, how in damaged:
        _damage(path, how)
    process.ready.with_name(process.ready.name + ".go").write_text("")
    assert process.finish() == 0, process.stderr
    for path, how in damaged:
        assert f"{path}: skipped (" in process.stderr, how
    assert "step 4: none of the batch's 4 images could be read; no update" in process.stderr
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == [str(s) for s in range(6)]
    assert [row.split(",")[-1] for row in rows] == ["0", "0", "0", "0", "4", "1"]
    assert load_checkpoint(run / "last").train_state["global_step"] == 6


@pytest.mark.parametrize("where", ["weights file", "fsync"])
def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_one_and_says_so(
        where, fault_data, float_reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_save_file, real_fsync, saves = checkpoint_format.save_file, checkpoint_format._fsync, []

    def save_file_filling_the_disk(tensors, filename, *args, **kwargs):
        saves.append(filename)
        if len(saves) == 4:  # `last` at step 3: after `last` at step 2 (weights, optimizer) and `best` at step 3
            with open(filename, "wb") as f:
                f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save_file(tensors, filename, *args, **kwargs)

    def fsync_filling_the_disk(path):
        saves.append(path)
        # the third weights file synced: `last` at step 3 (after `last` at step 2 and `best` at step 3)
        if path.name == "model.safetensors" and sum(p.name == "model.safetensors" for p in saves) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(path)

    if where == "weights file":
        monkeypatch.setattr(checkpoint_format, "save_file", save_file_filling_the_disk)
    else:
        monkeypatch.setattr(checkpoint_format, "_fsync", fsync_filling_the_disk)
    assert main(train_args(fault_data, run)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {run / 'last'}: could not save the checkpoint (ENOSPC: No space left on device); "
                      f"the previous checkpoint there is unchanged; free disk space or fix the folder's permissions"]
    assert load_checkpoint(run / "last", with_optimizer=True).train_state["global_step"] == 2
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]

    if where == "weights file":  # (once is enough: the resume does not depend on where the save failed)
        monkeypatch.undo()  # space freed: the run resumes from step 2 and ends where an uninterrupted one does
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
        assert_bit_identical(final_weights(run), final_weights(float_reference))


@pytest.mark.parametrize("how", ["truncated", "deleted", "garbage"])
def test_a_damaged_annotation_file_is_named_in_one_line(how, fault_data, tmp_path, capsys):
    data_yaml = shutil.copytree(fault_data.parent, tmp_path / "data") / fault_data.name
    annotations = resolve_dataset(str(data_yaml)).train.annotations
    _damage(annotations, how)
    assert main(train_args(data_yaml, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(annotations) in err[0], err


def _can_mount_a_private_tmpfs(where) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def test_a_really_full_disk_during_a_checkpoint_save(fault_data, float_reference, tmp_path):
    """On an 8 MB tmpfs (mounted in a private mount namespace, so nothing outlives the test): `last`
    (4.4 MB) and `best` (2.2 MB) fit, the next `last` does not."""
    small_disk, kept = tmp_path / "small_disk", tmp_path / "kept"
    if not _can_mount_a_private_tmpfs(small_disk):
        pytest.skip("cannot mount a tmpfs here (needs unshare and mount permissions); the simulated ENOSPC runs")
    run = small_disk / "run"
    lpdet = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "lpdet", *train_args(fault_data, run)])
    script = (f"mount -t tmpfs -o size=8m tmpfs {small_disk} && cd {ROOT} && PYTHONPATH={ROOT} {lpdet} "
              f"2> {tmp_path / 'stderr.txt'}; echo $? > {tmp_path / 'status'}; cp -a {run} {kept}")
    subprocess.run(["unshare", "-m", "sh", "-c", script], check=True, timeout=300)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert (tmp_path / "status").read_text().strip() == "2", stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        f"error: {run / 'last'}: could not save the checkpoint (ENOSPC: No space left on device); the previous "
        f"checkpoint there is unchanged; free disk space or fix the folder's permissions"]
    assert load_checkpoint(kept / "last", with_optimizer=True).train_state["global_step"] == 2
    assert not [p for p in kept.iterdir() if ".tmp-" in p.name]
    assert main(["train", "--resume", str(kept), "--quiet"]) == 0  # on a disk with room
    assert_bit_identical(final_weights(kept), final_weights(float_reference))


def _decompression_bomb_png(side: int = 20_000) -> bytes:
    """A 1 kB PNG that declares side x side pixels (4e8: over twice PIL's MAX_IMAGE_PIXELS)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_a_counted_skip_in_training_and_predict(fault_data, tmp_path, caplog, capsys):
    data_yaml = shutil.copytree(fault_data.parent, tmp_path / "data") / fault_data.name
    spec = resolve_dataset(str(data_yaml))
    train_set = CocoDetection(spec.train.annotations, spec.train.images)
    bomb, good = train_set.image_path(0), train_set.image_path(1)
    bomb.write_bytes(_decompression_bomb_png())
    with pytest.raises(PIL.Image.DecompressionBombError):  # what PIL's guard does with it
        PIL.Image.open(bomb)

    run = tmp_path / "run"
    assert main(train_args(data_yaml, run, epochs=1)) == 0
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{bomb}: skipped (")]
    assert skips and all("decompression bomb" in m for m in skips), skips
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert sum(int(row.split(",")[-1]) for row in rows) == 1  # counted once, in the batch that held it

    caplog.clear()
    capsys.readouterr()
    assert main(["predict", str(run), str(bomb), str(good), "--out", str(tmp_path / "pred")]) == 0
    warnings = [r.getMessage() for r in caplog.records if str(bomb) in r.getMessage()]
    assert len(warnings) == 1 and "decompression bomb" in warnings[0], warnings
    assert "1 of 2 images could not be read" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [f"{good.name}.pred.png"]
    # the guard stays on: lpdet never raises or removes the limit
    assert PIL.Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)
    setting_the_limit = re.compile(r"MAX_IMAGE_PIXELS\s*=(?!=)")
    assert not [p for p in (ROOT / "lpdet").rglob("*.py") if setting_the_limit.search(p.read_text())]


def _first_image_read_as_a_fifo(fault_data, tmp_path):
    """A copy of the dataset whose first training image is a FIFO: reading it blocks until someone
    writes (as a file on a dead network mount would)."""
    data_yaml = shutil.copytree(fault_data.parent, tmp_path / "data") / fault_data.name
    spec = resolve_dataset(str(data_yaml))
    train_set = CocoDetection(spec.train.annotations, spec.train.images)
    first = train_set.image_path(EpochSampler(len(train_set), shuffle=True, seed=0, epoch=0).order()[0])
    first.unlink()
    os.mkfifo(first)
    return data_yaml, first


def _readers_of(path) -> list[int]:
    """Child processes of this one that hold `path` open."""
    readers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
                continue
            if any(os.readlink(fd) == str(path) for fd in (stat.parent / "fd").iterdir()):
                readers.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return readers


def _release(fifo) -> None:
    """Let a reader blocked on `fifo` go (it then reads an empty file)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader left
        pass


def test_a_stuck_dataloader_worker_is_an_error_naming_the_image(fault_data, tmp_path, monkeypatch, capsys):
    data_yaml, fifo = _first_image_read_as_a_fifo(fault_data, tmp_path)
    monkeypatch.setattr(worker_watch, "WORKER_TIMEOUT_S", 10)
    try:
        assert main(train_args(data_yaml, tmp_path / "run", epochs=1, workers=1)) == 2
    finally:
        _release(fifo)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: data loading failed: DataLoader timed out after 10 seconds; worker 0 was reading "
                      f"{fifo}; check that file (a dead network mount, a file that is not an image), or run with "
                      f"--workers 0 to read it in the main process"]


def test_a_dataloader_worker_killed_while_reading_is_an_error_naming_the_image(fault_data, tmp_path, capsys):
    data_yaml, fifo = _first_image_read_as_a_fifo(fault_data, tmp_path)
    killed = []

    def kill_the_reader():
        fd = os.open(fifo, os.O_WRONLY)  # returns once the worker opened the FIFO to read it
        killed.extend(_readers_of(fifo))
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        os.close(fd)

    killer = threading.Thread(target=kill_the_reader, daemon=True)
    killer.start()
    try:
        assert main(train_args(data_yaml, tmp_path / "run", epochs=1, workers=1)) == 2
    finally:
        _release(fifo)
        killer.join(30)
    assert len(killed) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(
        rf"error: data loading failed: DataLoader worker \(pid\(?s?\)? {killed[0]}\) (is killed by signal: Killed|"
        rf"exited unexpectedly); worker 0 was reading {re.escape(str(fifo))}; check that file .*", errors[0]), errors
