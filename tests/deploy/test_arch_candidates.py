"""Every kind of architecture-search candidate (smallest, largest, random) inherits its weights from
the supernet, passes the multiple-of-8 check, runs, and exports to a fully int8 ONNX graph
through the QAT path (prepare_qat + calibrate + export_onnx) that onnxruntime runs."""

from __future__ import annotations

import collections
import random

import numpy as np
import onnx
import pytest
import torch

from lpdet.deploy.export import export_onnx
from lpdet.deploy.runtime import onnx_session
from lpdet.models.arch_space import (
    SearchSpace,
    geometry_problems,
    largest_candidate,
    sample_candidate,
    smallest_candidate,
    to_model_config,
)
from lpdet.models.inherit import Supernet, inherit, recalibrate_bn
from lpdet.models.registry import build_detector
from lpdet.quant.fake_quant import QConv2d, QResidual
from lpdet.quant.qat import calibrate, prepare_qat

R = 96


def _batches(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 3, R, R, generator=generator) for _ in range(count)]


@pytest.fixture(scope="module")
def supernets():
    """The largest network of each space, its BN statistics set from images (as if trained)."""
    nets = {}
    for arch in ("mobilenet_v2_ssdlite", "mobilenet_v1_ssd"):
        torch.manual_seed(0)
        detector = build_detector(to_model_config(largest_candidate(SearchSpace(arch=arch, resolutions=[R])), 3))
        recalibrate_bn(detector, _batches(2))
        nets[arch] = Supernet.from_detector(detector)
    return nets


def _candidates():
    v2, v1 = SearchSpace(resolutions=[R]), SearchSpace(arch="mobilenet_v1_ssd", resolutions=[R])
    yield "v2-smallest", smallest_candidate(v2)
    yield "v2-largest", largest_candidate(v2)
    for seed in (1, 2):
        yield f"v2-random{seed}", sample_candidate(v2, random.Random(seed))
    yield "v1-random", sample_candidate(v1, random.Random(3))


@pytest.mark.parametrize("name, candidate", list(_candidates()), ids=[n for n, _ in _candidates()])
def test_candidate_inherits_runs_and_exports_fully_int8(supernets, tmp_path, name, candidate):
    cfg = to_model_config(candidate, num_classes=3)
    detector = inherit(cfg, supernets[cfg.arch])
    assert geometry_problems(detector) == []
    recalibrate_bn(detector, _batches(2, seed=1))
    with torch.no_grad():
        cls_logits, box_deltas = detector.eval()(_batches(1)[0])
    assert cls_logits.shape == (2, detector.anchors.shape[0], 4) and torch.isfinite(box_deltas).all()

    prepare_qat(detector)
    calibrate(detector, _batches(3, seed=2))
    detector.eval()
    path = export_onnx(detector, tmp_path / f"{name}.onnx")
    optimized_path = tmp_path / f"{name}.opt.onnx"
    session = onnx_session(path, threads=1, optimized_model=optimized_path)
    scores, boxes = session.run(None, {"images": _batches(1, seed=3)[0][:1].numpy()})
    assert np.isfinite(scores).all() and np.isfinite(boxes).all()
    optimized = collections.Counter(n.op_type for n in onnx.load(str(optimized_path)).graph.node)
    assert optimized["QLinearConv"] == sum(isinstance(m, QConv2d) for m in detector.modules()) > 0
    assert not [op for op in optimized if "Conv" in op and op != "QLinearConv"], optimized  # no float conv left
    assert optimized["QLinearAdd"] == sum(isinstance(m, QResidual) for m in detector.modules())
    assert optimized["QuantizeLinear"] == 1  # only the input
