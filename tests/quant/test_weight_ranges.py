import numpy as np
import pytest
import torch

from lpdet.deploy.export import export_onnx
from lpdet.quant.weight_ranges import format_spread, summarize_spread, weight_spread
from tests.deploy.tiny import tiny_detector


def _folded_spread(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> float:
    """The spread computed by hand from the torch modules: BN folded as y = w * gamma / sqrt(var + eps)."""
    folded = conv.weight.detach() * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().view(-1, 1, 1, 1)
    ranges = folded.abs().flatten(1).amax(1).double().numpy()
    return float(ranges.max() / np.median(ranges))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    detector = tiny_detector(resolution=64)
    with torch.no_grad():  # one depthwise channel with a 40x wider folded range
        detector.backbone.features[2].conv[1][1].weight[5] *= 40
    return detector, export_onnx(detector, tmp_path_factory.mktemp("spread") / "fp32.onnx")


def test_spread_matches_bn_folding_by_hand(exported):
    detector, path = exported
    layers = {layer.name: layer for layer in weight_spread(path)}
    depthwise = detector.backbone.features[2].conv[1]
    expand = detector.backbone.features[2].conv[0]
    dw_layer = layers["backbone/features.2/conv/conv.1/conv.1.0"]
    assert dw_layer.depthwise and dw_layer.channels == depthwise[0].out_channels
    assert dw_layer.spread == pytest.approx(_folded_spread(depthwise[0], depthwise[1]), rel=1e-4)
    assert dw_layer.spread > 20  # the widened channel dominates
    pw_layer = layers["backbone/features.2/conv/conv.0/conv.0.0"]
    assert not pw_layer.depthwise
    assert pw_layer.spread == pytest.approx(_folded_spread(expand[0], expand[1]), rel=1e-4)
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in detector.modules())
    assert len(layers) == n_convs


def test_summary_names_the_worst_layer(exported):
    _, path = exported
    summary = summarize_spread(weight_spread(path))
    assert summary["depthwise"]["worst_layer"] == "backbone/features.2/conv/conv.1/conv.1.0"
    assert summary["depthwise"]["max"] > 20 > summary["depthwise"]["median"] >= 1
    assert summary["other"]["max"] < summary["depthwise"]["max"]
    text = format_spread(summary)
    assert "worst" in text and f"about {127 / summary['depthwise']['max']:.0f} of 127 levels" in text
