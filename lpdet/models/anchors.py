"""SSD anchors (default boxes), TF Object Detection API style, for any feature-map sizes.

Layer k of 6 has scale s_k linear from `min_scale` to `max_scale`. Each location gets boxes
of aspect ratios (1, 2, 1/2, 3, 1/3) at s_k plus one at ratio 1 and scale sqrt(s_k·s_{k+1})
(s_6 = 1), i.e. 6 boxes. The first layer has only 3 (TF's `reduce_boxes_in_lowest_layer`):
(0.1, ratio 1), (min_scale, 2), (min_scale, 1/2). A box of scale s and ratio r is
w = s·sqrt(r), h = s/sqrt(r) (normalised; the input is square). Centres sit at
((j + 0.5) / W, (i + 0.5) / H), computed from the real map size, so any resolution works.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NUM_LAYERS = 6
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
LOWEST_LAYER_SMALL_SCALE = 0.1


def layer_scales(min_scale: float, max_scale: float, num_layers: int = NUM_LAYERS) -> list[float]:
    """s_0..s_{n-1} linear in [min_scale, max_scale], plus s_n = 1.0 for the last interpolated box."""
    return [min_scale + (max_scale - min_scale) * k / (num_layers - 1) for k in range(num_layers)] + [1.0]


def box_shapes(layer: int, min_scale: float, max_scale: float) -> list[tuple[float, float]]:
    """(w, h) of the boxes at one location of `layer`, in anchor order."""
    if layer == 0:
        scale_ratio = [(LOWEST_LAYER_SMALL_SCALE, 1.0), (min_scale, 2.0), (min_scale, 0.5)]
    else:
        scales = layer_scales(min_scale, max_scale)
        s, s_next = scales[layer], scales[layer + 1]
        scale_ratio = [(s, r) for r in ASPECT_RATIOS] + [(math.sqrt(s * s_next), 1.0)]
    return [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in scale_ratio]


def num_anchors_per_location() -> list[int]:
    """Boxes per location for each of the 6 feature maps: [3, 6, 6, 6, 6, 6]."""
    # The count does not depend on the scales; any valid pair will do.
    return [len(box_shapes(k, 0.2, 0.95)) for k in range(NUM_LAYERS)]


def anchors_for(feature_map_sizes: list[tuple[int, int]], min_scale: float, max_scale: float) -> Tensor:
    """All anchors as `[A, 4]` (cx, cy, w, h) normalised, A = Σ H·W·n_k, for the real map sizes
    and the scales of the first and last map (the anchors own their parameters: no model config).

    Order: feature map by feature map, row-major over (i, j), then box within the location:
    the order `heads.PredictionHead` flattens its outputs in.
    """
    if len(feature_map_sizes) != NUM_LAYERS:
        raise ValueError(f"expected {NUM_LAYERS} feature map sizes, got {len(feature_map_sizes)}")
    per_map = []
    for layer, (height, width) in enumerate(feature_map_sizes):
        shapes = torch.tensor(box_shapes(layer, min_scale, max_scale), dtype=torch.float64)  # [n, 2]
        cy = (torch.arange(height, dtype=torch.float64) + 0.5) / height
        cx = (torch.arange(width, dtype=torch.float64) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 1, 2)  # [H·W, 1, 2]
        n = shapes.shape[0]
        boxes = torch.cat([centres.expand(-1, n, 2), shapes.expand(centres.shape[0], n, 2)], dim=-1)
        per_map.append(boxes.reshape(-1, 4))
    # Built in float64 so that centres like 0.5/19 are exact to float32 precision.
    return torch.cat(per_map).to(torch.float32)
