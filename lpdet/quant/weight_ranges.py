"""How unevenly a model's conv weights spread over output channels once BatchNorm is folded.

This one number per layer decides whether per-tensor int8 weights (the naive baseline) lose
accuracy: with one scale for the whole tensor, a channel whose largest |w| is `spread` times
below the layer's largest keeps only about 127 / spread of the 127 int8 levels. Depthwise
layers are where it grows (each output channel has its own 9 weights and its own BN factor),
which is why MobileNets are the textbook case; per-channel scales (calibrated PTQ, QAT) are
immune to it. Read from an fp32 ONNX export, whose convolutions have BN folded in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["LayerSpread", "weight_spread", "summarize_spread", "format_spread"]


@dataclass(frozen=True)
class LayerSpread:
    name: str  # the Conv node
    depthwise: bool  # group == output channels > 1
    channels: int
    spread: float  # max / median over output channels of max |w| (1.0 = perfectly even)


def weight_spread(fp32_onnx: Path) -> list[LayerSpread]:
    """Per-output-channel weight range spread of every Conv with a constant weight in `fp32_onnx`."""
    model = onnx.load(str(fp32_onnx))
    weights = {t.name: t for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
        ranges = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        median = float(np.median(ranges))
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        spread = float(ranges.max() / median) if median > 0 else float("inf")
        name = (node.name or node.output[0]).removeprefix("/detector/").removesuffix("/Conv")
        layers.append(LayerSpread(name, group > 1 and group == w.shape[0], int(w.shape[0]), spread))
    return layers


def summarize_spread(layers: list[LayerSpread]) -> dict:
    """Median and worst spread of the depthwise layers and of the other convs, and the worst layers."""
    summary = {}
    for kind, chosen in (("depthwise", [x for x in layers if x.depthwise]),
                         ("other", [x for x in layers if not x.depthwise])):
        if not chosen:
            continue
        worst = max(chosen, key=lambda x: x.spread)
        summary[kind] = {"layers": len(chosen), "median": round(float(np.median([x.spread for x in chosen])), 2),
                         "max": round(worst.spread, 2), "worst_layer": worst.name}
    return summary


def format_spread(summary: dict) -> str:
    """Two sentences for a report: the spreads and what they mean for per-tensor (naive) weights."""
    if not summary:
        return "Why naive 8-bit holds or drops: no convolutions with constant weights to measure"
    parts = [f"{kind} convs median {s['median']:.1f}, worst {s['max']:.1f} ({s['worst_layer']})"
             for kind, s in summary.items()]
    worst = max(s["max"] for s in summary.values())
    return (f"Why naive 8-bit holds or drops: folded weight range spread (max / median over output channels of max |w|): {'; '.join(parts)}. "
            f"Per-tensor int8 weights leave a median channel of the worst layer about {127 / worst:.0f} of 127 "
            f"levels.")
