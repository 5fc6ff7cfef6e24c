"""Data-parallel training: real `lpdet train --nproc 2` runs (torchrun, gloo, 2 CPU processes) and, in two
spawned processes, the step's arithmetic against one process on the whole batch."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lpdet.data.loader import DistributedEpochSampler, EpochSampler
from lpdet.errors import Interrupted, LpdetError
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.models.config import ModelConfig
from lpdet.models.loss import multibox_loss
from lpdet.models.registry import build_detector
from lpdet.train.config import TrainConfig
from lpdet.train.distributed import DataParallel, Ranks
from lpdet.train.launch import _failure
from lpdet.train.loop import train
from lpdet.train.tasks import CLASSIFICATION
from tests.helpers import tiny_synth

ROOT = Path(__file__).resolve().parents[2]
HOOK = Path(__file__).parent / "rank_hook"  # its sitecustomize makes a rank fail or stop on request
TIMEOUT_S = 900  # a run that hangs fails the test instead of the suite (a hang guard, not a speed goal)
STEPS = 8  # 16 train images / global batch 4 × 2 epochs
RUN_FILES = {"best", "config.yaml", "last", "metrics.csv", "tb", "val.csv"}


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory):
    return tiny_synth(tmp_path_factory.mktemp("synth"), n_train=16, n_val=4)


def _train_args(data_yaml: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data_yaml), "--width", "0.25", "--resolution", "64", "--epochs", "2",
            "--batch-size", "4", "--lr", "0.01", "--warmup-steps", "2", "--workers", "0", "--threads", "1",
            "--precision", "fp32", "--checkpoint-every", "1", "--out", str(out), "--quiet", "--nproc", "2"]


def _lpdet(args: list[str], hook: str | None = None) -> subprocess.CompletedProcess:
    """`python -m lpdet ARGS`; on a hang, SIGTERM (torchrun passes it to the ranks), then the test fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("LPDET_TEST_RANK_HOOK", "WORLD_SIZE", "RANK")}
    env.update(PYTHONPATH=f"{HOOK}{os.pathsep}{ROOT}", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if hook:
        env["LPDET_TEST_RANK_HOOK"] = hook
    process = subprocess.Popen([sys.executable, "-m", "lpdet", *args], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"lpdet {' '.join(args)} hung for {TIMEOUT_S} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ddp_run(data_yaml, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = _lpdet(_train_args(data_yaml, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_two_processes_train_and_only_rank_0_writes(ddp_run):
    out, done = ddp_run
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert len(list((out / "tb").iterdir())) == 1  # one TensorBoard writer: rank 0's
    steps = _rows(out / "metrics.csv")
    assert [int(r["step"]) for r in steps] == list(range(STEPS))  # the single-process step count
    assert all(0 < float(r["loss"]) < 1e3 for r in steps)
    assert [int(r["epoch"]) for r in _rows(out / "val.csv")] == [1, 2]
    last = load_checkpoint(out / "last", with_optimizer=True)
    assert (last.train_state["global_step"], last.train_state["world_size"]) == (STEPS, 2)
    assert done.stdout.count("best checkpoint:") == 1
    # --checkpoint-every 1: after every step the ranks compared their weights (check_replicas_agree)
    assert "differ" not in done.stderr


def test_a_qat_run_trains_on_two_processes(data_yaml, tmp_path):
    float_run = tmp_path / "float"
    train(TrainConfig(data=str(data_yaml), model=ModelConfig("mobilenet_v2_ssdlite", 0, width=0.25, resolution=64),
                      epochs=1, batch_size=4, lr=0.01, warmup_steps=0, workers=0, threads=1, precision="fp32",
                      out=float_run), progress=False)
    out = tmp_path / "qat"
    args = [*_train_args(data_yaml, out), "--epochs", "1", "--qat", "--init", str(float_run), "--freeze-bn-after", "2",
            "--freeze-observers-after", "3"]
    done = _lpdet(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == list(range(STEPS // 2))
    last = load_checkpoint(out / "last")
    assert last.model_config.quantization == "qat" and last.train_state["world_size"] == 2


def test_resume_under_ddp_is_exact_and_another_world_size_is_refused(data_yaml, ddp_run, tmp_path):
    full, _ = ddp_run
    out = tmp_path / "run"
    stopped = _lpdet(_train_args(data_yaml, out), hook="sigterm:0:5")  # rank 0 pre-empted mid-epoch 2
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert f"lpdet train --resume {out}" in stopped.stderr
    assert load_checkpoint(out / "last").train_state["global_step"] == 6  # every rank stopped after step 5
    with pytest.raises(LpdetError, match="trained on 2 process"):
        train(TrainConfig(out=out), resume=True, progress=False)
    resumed = _lpdet(["train", "--resume", str(out), "--nproc", "2", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = load_checkpoint(full / "last"), load_checkpoint(out / "last")
    assert expected.model_state.keys() == got.model_state.keys()
    assert all(torch.equal(expected.model_state[k], got.model_state[k]) for k in expected.model_state)
    assert [r["loss"] for r in _rows(out / "metrics.csv")] == [r["loss"] for r in _rows(full / "metrics.csv")]


def test_a_failing_rank_ends_the_run_with_its_error(data_yaml, tmp_path):
    failed = _lpdet(_train_args(data_yaml, tmp_path / "run"), hook="raise:1:2")
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "RuntimeError: injected failure on rank 1 at step 2" in failed.stderr
    assert "error: training process rank 1 exited with status 1" in failed.stderr


def test_a_hung_rank_fails_the_others_after_the_timeout(data_yaml, tmp_path):
    hung = _lpdet([*_train_args(data_yaml, tmp_path / "run"), "--dist-timeout", "20"], hook="hang:1:2")
    assert hung.returncode == 2, hung.stderr[-3000:]
    assert "error: rank 0: lost contact with the other processes" in hung.stderr
    assert "error: training process rank 0 exited with status 2" in hung.stderr


def test_global_batch_must_split_into_at_least_two_images_per_rank():
    dp = DataParallel(Ranks(rank=0, world_size=4), torch.device("cpu"))  # not started: no process group
    assert dp.per_rank_batch(8) == 2
    with pytest.raises(LpdetError, match="multiple of 4"):
        dp.per_rank_batch(10)
    with pytest.raises(LpdetError, match="at least 2"):
        dp.per_rank_batch(4)
    with pytest.raises(LpdetError, match="trained on 1 process"):
        dp.check_world_size(1, "RUN")


@pytest.mark.parametrize("n, world, batch", [(16, 2, 4), (18, 2, 4), (23, 3, 6)])
def test_ranks_batches_together_are_the_single_process_batches(n, world, batch):
    single = EpochSampler(n, shuffle=True, seed=7, epoch=3).order()
    per_rank = [list(DistributedEpochSampler(n, rank=r, world_size=world, seed=7, epoch=3)) for r in range(world)]
    share = batch // world
    steps = min(len(items) for items in per_rank) // share
    assert steps == n // batch
    for k in range(steps):
        together = sorted(i for items in per_rank for i in items[k * share:(k + 1) * share])
        assert together == sorted(single[k * batch:(k + 1) * batch])
    resumed = DistributedEpochSampler(n, rank=1, world_size=world, seed=7, epoch=3, start=2 * share)
    assert list(resumed) == per_rank[1][2 * share:] and len(resumed) == len(per_rank[1]) - 2 * share


def _targets() -> list[dict]:
    """Four images with 1, 0, 3 and 2 boxes: ranks 0 and 1 hold different numbers of positives."""
    targets = []
    for count in (1, 0, 3, 2):
        boxes = torch.tensor([[0.05 + 0.3 * j, 0.1, 0.3 + 0.3 * j, 0.6] for j in range(count)]).reshape(-1, 4)
        targets.append({"boxes": boxes, "labels": torch.arange(count) % 3 + 1})
    return targets


def _gradient_worker(rank: int, port: int, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dp = DataParallel(Ranks(rank=rank, world_size=2), torch.device("cpu")).start(timeout_s=60)
    torch.manual_seed(0)
    # eval mode: BatchNorm on its running statistics, so each image's output is its own in both runs
    model = build_detector(ModelConfig("mobilenet_v2_ssdlite", 3, width=0.25, resolution=64)).eval()
    images, targets = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)), _targets()
    one_process = copy.deepcopy(model)
    reference = multibox_loss(*one_process(images), targets, one_process.anchors)
    reference["loss"].backward()
    share = slice(2 * rank, 2 * rank + 2)
    per_rank = copy.deepcopy(model)  # the naive way: each rank's loss over its own positives
    naive = multibox_loss(*per_rank(images[share]), targets[share], per_rank.anchors)["loss"]
    naive.backward()
    for p in per_rank.parameters():
        torch.distributed.all_reduce(p.grad)
        p.grad /= 2
    ddp = dp.wrap(model, sync_bn=False)
    losses = multibox_loss(*ddp(images[share]), targets[share], model.anchors,
                           count_positives=dp.count_everywhere)
    logged = dp.global_losses(losses)
    (losses["loss"] * dp.loss_scale).backward()
    grads = [(p.grad, q.grad, n.grad) for p, q, n in zip(model.parameters(), one_process.parameters(),
                                                         per_rank.parameters())]
    dp.check_replicas_agree(model, step=0)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3 * rank  # rank 1's weights now differ
    try:
        dp.check_replicas_agree(model, step=1)
        caught = ""
    except LpdetError as e:
        caught = str(e)
    classification = _classification_step(dp, rank)
    if rank == 0:
        Path(result).write_text(json.dumps({
            "loss": logged["loss"], "reference_loss": reference["loss"].item(),
            "ddp_error": max((g - r).abs().max().item() for g, r, _ in grads),
            "naive_error": max((n - r).abs().max().item() for _, r, n in grads),
            "scale": max(r.abs().max().item() for _, r, _ in grads), "divergence": caught,
            "classification": classification}))
    dp.close()


def _classification_step(dp: DataParallel, rank: int) -> dict:
    """The classification task's loss on shares of 1 and 3 images (as when a rank's other images could
    not be read) against one process's mean cross-entropy over the 4, and against each rank's own mean."""
    torch.manual_seed(0)
    model = build_detector(ModelConfig("mobilenet_v2_classifier", 3, width=0.25, resolution=32)).eval()
    images, labels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)), [0, 2, 1, 2]
    one_process = copy.deepcopy(model)
    reference = torch.nn.functional.cross_entropy(one_process(images), torch.tensor(labels))
    reference.backward()
    share = slice(0, 1) if rank == 0 else slice(1, 4)
    per_rank = copy.deepcopy(model)  # the naive way: each rank's mean over its own share
    torch.nn.functional.cross_entropy(per_rank(images[share]), torch.tensor(labels[share])).backward()
    for p in per_rank.parameters():
        torch.distributed.all_reduce(p.grad)
        p.grad /= 2
    ddp = dp.wrap(model, sync_bn=False)
    losses = CLASSIFICATION.loss(ddp(images[share]), labels[share], model, None, dp.count_everywhere)
    logged = dp.global_losses(losses)
    (losses["loss"] * dp.loss_scale).backward()
    grads = [(p.grad, q.grad, n.grad) for p, q, n in zip(model.parameters(), one_process.parameters(),
                                                         per_rank.parameters())]
    return {"loss": logged["loss"], "reference_loss": reference.item(),
            "ddp_error": max((g - r).abs().max().item() for g, r, _ in grads),
            "naive_error": max((n - r).abs().max().item() for _, r, n in grads),
            "scale": max(r.abs().max().item() for _, r, _ in grads)}


def test_a_ddp_step_has_the_single_process_gradient(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / "result.json"
    mp.spawn(_gradient_worker, args=(port, str(result)), nprocs=2)
    found = json.loads(result.read_text())
    assert found["loss"] == pytest.approx(found["reference_loss"], rel=1e-5)
    assert found["ddp_error"] <= 1e-5 * found["scale"]
    assert found["naive_error"] > 1e-2 * found["scale"]  # so the check above can fail
    assert "weights differ after step 1" in found["divergence"]
    classification = found["classification"]  # the mean over the global batch, whatever the shares
    assert classification["loss"] == pytest.approx(classification["reference_loss"], rel=1e-5)
    assert classification["ddp_error"] <= 1e-5 * classification["scale"]
    assert classification["naive_error"] > 1e-2 * classification["scale"]


def _child_failed(statuses: dict[int, int]):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    failures = {}
    for rank, status in statuses.items():
        failures[rank] = ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=status, error_file="<N/A>")
        failures[rank].timestamp = 1_700_000_000  # torchrun's one-second stamps: both in the same second
    return ChildFailedError("lpdet", failures)


def test_the_failure_named_is_the_crash_not_the_rank_that_lost_contact():
    # rank 1 crashed (status 1); rank 0 ended on the broken connection (lpdet's error, status 2) in the same second
    crashed = _failure(_child_failed({0: 2, 1: 1}), Path("run"), 2)
    assert "training process rank 1 exited with status 1" in str(crashed)
    # no crash: the first failure as torchrun orders them (a hung rank 1 killed, rank 0 timed out)
    hung = _failure(_child_failed({0: 2, 1: -signal.SIGTERM}), Path("run"), 2)
    assert "training process rank 0 exited with status 2" in str(hung)
    # a pre-empted rank 0 stays an interruption
    stopped = _failure(_child_failed({0: 128 + signal.SIGTERM, 1: 1}), Path("run"), 2)
    assert isinstance(stopped, Interrupted)
