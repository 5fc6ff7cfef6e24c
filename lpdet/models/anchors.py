"""SSD anchors (default boxes), TF Object Detection API style, for any feature-map sizes.

Layer k of 6 has scale s_k linear from `min_scale` to `max_scale`. Each location gets boxes
of aspect ratios (1, 2, 1/2, 3, 1/3) at s_k plus one at ratio 1 and scale sqrt(s_k·s_{k+1})
(s_6 = 1), i.e. 6 boxes. The first layer has only 3 (TF's `reduce_boxes_in_lowest_layer`):
(0.1, ratio 1), (min_scale, 2), (min_scale, 1/2). A box of scale s and ratio r is
w = s·sqrt(r), h = s/sqrt(r) (normalised; the input is square).

Centres, for the real map sizes (any resolution works), by `grid`:
- "map" (TF's): ((j + 0.5) / W, (i + 0.5) / H), spread evenly over each map.
- "stride": on the maps of stride s <= `STRIDE_GRID_MAX_STRIDE`, at the convolutions' own grid,
  ((s·j + 0.5) / R, (s·i + 0.5) / R): a chain of k×k stride-2 convs padded (k-1)/2 centres output
  cell j on input pixel s·j. The coarser maps keep TF's centres.

Sizes: the scales are fractions of the input, or of a reference input size (`size_scale`, from
`ModelConfig.anchor_reference`). A detector learns box sizes from what objects look like in pixels;
with sizes relative to the input, the same object drawn at a smaller input asks for a smaller
box, so a base trained at 300 predicts boxes 0.64x too small at 192 (its AP there without
fine-tuning was 0.005; with the anchors kept at their 300-pixel sizes, 0.088).

Why "stride" exists: with TF's centres, the gap between an anchor and the receptive field it is
predicted from depends on the input size (at 300 it is 7.4 - 0.2·j px on the 19×19 map and
14.5 - 2·j px on the 10×10 one; at 288 a constant 7.5 and 15.5 px), so a detector learns box
offsets that hold at its training size only (our base lost a third of its AP at 288). On the
stride grid the gap is zero at every size. The coarse maps keep TF's centres because there every
cell sees the whole image: the stride grid would put a 2×2 map's boxes at pixels 0 and 256 of a
300 input, so large objects would find no anchor to match.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NUM_LAYERS = 6
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
LOWEST_LAYER_SMALL_SCALE = 0.1
STRIDE_GRID_MAX_STRIDE = 64


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


def _centres(size: int, stride: int, resolution: int, grid: str) -> Tensor:
    """Normalised centres of one map axis of `size` cells (float64)."""
    cells = torch.arange(size, dtype=torch.float64)
    if grid == "stride" and stride <= STRIDE_GRID_MAX_STRIDE:
        return (stride * cells + 0.5) / resolution
    return (cells + 0.5) / size


def anchors_for(feature_map_sizes: list[tuple[int, int]], min_scale: float, max_scale: float,
                grid: str = "map", strides: tuple[int, ...] = (), resolution: int = 0,
                size_scale: float = 1.0) -> Tensor:
    """All anchors as `[A, 4]` (cx, cy, w, h) normalised, A = Σ H·W·n_k, for the real map sizes
    and the scales of the first and last map (the anchors own their parameters: no model config).
    `grid="stride"` also needs the maps' `strides` and the input `resolution`. Every box's w, h is
    multiplied by `size_scale` (reference size / input size: boxes that keep their pixel sizes).

    Order: feature map by feature map, row-major over (i, j), then box within the location:
    the order `heads.PredictionHead` flattens its outputs in.
    """
    if len(feature_map_sizes) != NUM_LAYERS:
        raise ValueError(f"expected {NUM_LAYERS} feature map sizes, got {len(feature_map_sizes)}")
    if grid not in ("map", "stride") or (grid == "stride" and (len(strides) != NUM_LAYERS or resolution < 1)):
        raise ValueError(f"anchor grid {grid!r} needs 'map', or 'stride' with {NUM_LAYERS} strides and the resolution")
    per_map = []
    for layer, (height, width) in enumerate(feature_map_sizes):
        shapes = torch.tensor(box_shapes(layer, min_scale, max_scale), dtype=torch.float64) * size_scale  # [n, 2]
        stride = strides[layer] if strides else 0
        cy = _centres(height, stride, resolution, grid)
        cx = _centres(width, stride, resolution, grid)
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 1, 2)  # [H·W, 1, 2]
        n = shapes.shape[0]
        boxes = torch.cat([centres.expand(-1, n, 2), shapes.expand(centres.shape[0], n, 2)], dim=-1)
        per_map.append(boxes.reshape(-1, 4))
    # Built in float64 so that centres like 0.5/19 are exact to float32 precision.
    return torch.cat(per_map).to(torch.float32)
