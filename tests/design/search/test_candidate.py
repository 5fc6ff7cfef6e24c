"""A search candidate of every kind (smallest, largest, random) is scored as deployed: inherited
from the trained supernet, exported to an ONNX graph that onnxruntime runs fully int8, AP on the
selection split, latency measured under the machine's lock."""

from __future__ import annotations

import collections
import random
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import onnx
import pytest

from lpdet.data.spec import load_dataset_yaml
from lpdet.data.sizes import read_coco_json
from lpdet.data.splits import eval_split
from lpdet.deploy.runtime import onnx_session
from lpdet.design.search.candidate import deployable, load_context, measure, score_candidate
from lpdet.design.search.sandwich import supernet_candidate
from lpdet.models.arch_space import load_candidate, sample_candidate, smallest_candidate
from lpdet.quant.fake_quant import QConv2d, QResidual


def _kinds(settings):
    yield "smallest", replace(smallest_candidate(settings.space), width=settings.width)
    yield "largest", supernet_candidate(settings)
    yield "random", replace(sample_candidate(settings.space, random.Random(5)), width=settings.width)


@pytest.fixture(scope="module")
def context(tiny_search):
    settings, data, supernet = tiny_search
    return load_context(settings, data, supernet)


@pytest.mark.parametrize("kind", ["smallest", "largest", "random"])
def test_every_kind_of_candidate_is_scored_as_a_fully_int8_onnx(context, tmp_path, kind):
    candidate = dict(_kinds(context.settings))[kind]
    score = score_candidate(candidate, context, tmp_path / kind, source="test")
    assert load_candidate(tmp_path / kind / "candidate.yaml") == candidate
    assert 0 <= score.select_ap <= 1 and score.latency_ms > 0
    optimized_path = tmp_path / "optimized.onnx"
    session = onnx_session(score.onnx, threads=1, optimized_model=optimized_path)
    r = candidate.resolution
    scores, boxes = session.run(None, {"images": np.random.default_rng(0).random((1, 3, r, r), dtype=np.float32)})
    assert np.isfinite(scores).all() and np.isfinite(boxes).all()
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimized_path)).graph.node)
    detector = deployable(candidate, context)
    assert ops["QLinearConv"] == sum(isinstance(m, QConv2d) for m in detector.modules()) > 0
    assert not [op for op in ops if "Conv" in op and op != "QLinearConv"], ops  # no float conv left
    assert ops["QLinearAdd"] == sum(isinstance(m, QResidual) for m in detector.modules())
    assert ops["QuantizeLinear"] == 1  # only the input


def test_ap_is_scored_on_the_selection_split_not_val(context, tmp_path, monkeypatch):
    import lpdet.design.search.candidate as module

    splits = []

    def recording_eval_split(data, resolution, category_ids=None, *, split="val", where="the model"):
        splits.append(split)
        return eval_split(data, resolution, category_ids, split=split, where=where)

    monkeypatch.setattr(module, "eval_split", recording_eval_split)
    score_candidate(supernet_candidate(context.settings), context, tmp_path, source="test")
    assert splits == ["select"]
    spec = load_dataset_yaml(context.data)
    select_ids = {im["id"] for im in read_coco_json(spec.select.annotations)["images"]}
    train_ids = {im["id"] for im in read_coco_json(spec.train.annotations)["images"]}
    assert select_ids and not select_ids & train_ids  # held out from the supernet's training images


def test_latency_waits_for_the_machine_lock(context, tmp_path):
    onnx_path = score_candidate(supernet_candidate(context.settings), context, tmp_path, source="test").onnx
    release = tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, pathlib, filelock\n"
         "with filelock.FileLock(sys.argv[1]):\n    print('held', flush=True)\n"
         "    while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.05)\n",
         context.settings.latency_lock, str(release)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        results = []
        measuring = threading.Thread(target=lambda: results.append(measure(onnx_path, context)))
        measuring.start()
        measuring.join(timeout=1.5)
        assert measuring.is_alive() and not results  # blocked while another process measures
        release.touch()
        measuring.join(timeout=60)
        assert results and results[0].median_ms > 0
    finally:
        release.touch()
        holder.wait(timeout=30)
