"""Why naive 8-bit holds on our models and when it collapses: AP against folded weight range spread.

Naive int8 (one weight scale per tensor) loses accuracy when a layer's output channels have very
different weight ranges after BatchNorm folding: the small channels keep only a few of the 127
levels. Long-trained ImageNet MobileNets have such depthwise layers; our short CPU trainings do
not (`lpdet compare-quant` prints the spread). This script emulates them on a trained checkpoint:
in every depthwise conv followed by a 1x1 conv, the first `--channels` channels get BN gamma and
beta multiplied by `factor` and the 1x1 conv's weights on those channels divided by it. The float
model computes the same function except where ReLU6 now clips the scaled channels (its AP is
measured too), but its folded weight spread grows about `factor` times. Then float, naive 8-bit
and calibrated PTQ (per-channel) are evaluated on the val split, as `lpdet compare-quant` does.

    python benchmarks/naive_int8_spread.py CKPT --data D [--factors 1 10 30 100] [--images 500]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation


def _first_conv(module: nn.Module) -> nn.Conv2d | None:
    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, Conv2dNormActivation) and isinstance(module[0], nn.Conv2d):
        return module[0]
    return None


def spread_depthwise_ranges(detector: nn.Module, factor: float, channels: int = 3) -> int:
    """Scale the folded range of `channels` output channels of every depthwise conv + BN that feeds
    a 1x1 conv directly (MobileNetV1 and V2 blocks) by `factor` (see the module docstring).
    Returns how many depthwise layers were changed."""
    changed = 0
    with torch.no_grad():
        for parent in detector.modules():
            if not isinstance(parent, nn.Sequential):
                continue
            children = list(parent.children())
            for depthwise, following in zip(children, children[1:]):
                pointwise = _first_conv(following)
                if not (isinstance(depthwise, Conv2dNormActivation) and depthwise[0].groups > 1
                        and pointwise is not None and pointwise.kernel_size == (1, 1)):
                    continue
                bn = depthwise[1]
                bn.weight[:channels] *= factor
                bn.bias[:channels] *= factor
                pointwise.weight[:, :channels] /= factor
                changed += 1
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a trained float checkpoint (or run directory)")
    parser.add_argument("--data", default="synth")
    parser.add_argument("--factors", type=float, nargs="+", default=[1, 10, 30, 100])
    parser.add_argument("--channels", type=int, default=3, help="channels scaled per depthwise layer")
    parser.add_argument("--images", type=int, default=500, help="val images to evaluate (0 = all)")
    parser.add_argument("--calibration", type=int, default=100, help="calibration images (train split)")
    args = parser.parse_args()

    from lpdet.data.coco import CocoDetection
    from lpdet.data.spec import resolve_dataset
    from lpdet.data.transforms import eval_transforms
    from lpdet.deploy.export import export_onnx
    from lpdet.deploy.runtime import load_model
    from lpdet.eval.coco_eval import evaluate
    from lpdet.deploy.ptq import calibration_batch, quantize_calibrated, quantize_naive
    from lpdet.quant.weight_ranges import summarize_spread, weight_spread
    from lpdet.deploy.runtime import load_detector

    detector, _ = load_detector(args.checkpoint)
    resolution = int(detector.config.resolution)
    spec = resolve_dataset(args.data)
    val = CocoDetection(spec.val.annotations, spec.val.images, transform=eval_transforms(resolution))
    calib_split = spec.train or spec.val
    calibration = calibration_batch(CocoDetection(calib_split.annotations, calib_split.images,
                                                  transform=eval_transforms(resolution)), args.calibration)
    print(f"{detector.config.arch} @{resolution}, {args.checkpoint}; {args.channels} channels scaled per depthwise "
          f"layer; AP (%) on {args.images or len(val)} val images\n")
    print(f"{'factor':>7}{'layers':>8}{'dw spread median':>18}{'dw spread max':>15}"
          f"{'float AP':>10}{'naive AP':>10}{'PTQ AP':>9}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lpdet-spread-") as tmp:
        for factor in args.factors:
            detector, _ = load_detector(args.checkpoint)
            layers = spread_depthwise_ranges(detector, factor, args.channels)
            fp32 = export_onnx(detector, Path(tmp) / f"fp32-{factor:g}.onnx")
            spread = summarize_spread(weight_spread(fp32))["depthwise"]
            models = (fp32, quantize_naive(fp32, Path(tmp) / f"naive-{factor:g}.onnx", calibration),
                      quantize_calibrated(fp32, Path(tmp) / f"ptq-{factor:g}.onnx", calibration))
            aps = [evaluate(load_model(path).predict, val, max_images=args.images, progress=False).metrics["AP"]
                   for path in models]
            print(f"{factor:>7g}{layers:>8}{spread['median']:>18.1f}{spread['max']:>15.1f}"
                  + "".join(f"{100 * ap:>{w}.1f}" for ap, w in zip(aps, (10, 10, 9))), flush=True)


if __name__ == "__main__":
    from lpdet.errors import LpdetError

    try:
        main()
    except LpdetError as e:  # a wrong path or dataset: one line, not a traceback
        raise SystemExit(f"error: {e}") from None
