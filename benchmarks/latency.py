"""int8 vs fp32 per-image latency of our detectors and a torchvision peer, with onnxruntime on this CPU.

In one run: MobileNetV1-SSD @300, MobileNetV2-SSDLite @300 and @236 (width 1.0, 90 classes,
random init) exported to fp32 ONNX and quantized with `quantize_calibrated` (u8 activations,
s8 per-channel weights; calibrated on random images: latency does not depend on the weights),
plus torchvision's `ssdlite320_mobilenet_v3_large` (random init; backbone + head + softmax +
box decoding exported to the lpdet graph contract, so it runs through the same runtime and
post-processing) as a peer. All models are timed by lpdet's harness (`lpdet.deploy.latency.
compare_latency`): interleaved round by round (batch 1, one thread by default, end to end = graph +
NMS), until every median and ratio is known to ±3% (95% interval) or `--time-cap` is hit, so a
shared machine's load hits them alike; int8/fp32 is the median of per-round ratios, with its
interval. MACs come from `lpdet.models.profile` (ours) and the same Conv2d/Linear hook count
(peer); GMAC/s = MACs / graph time.

    python benchmarks/latency.py [--time-cap 120] [--runs N] [--data synth] [--threads 1] [--out DIR]
                                 [--json FILE] [--peer-int8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

OURS = (("mobilenet_v1_ssd", 300), ("mobilenet_v2_ssdlite", 300), ("mobilenet_v2_ssdlite", 236))
PEER = "torchvision_ssdlite320_mobilenet_v3_large"
NUM_CLASSES = 90


@dataclass
class Entry:
    name: str
    resolution: int
    macs: int
    fp32: Path
    int8: Path | None


class _PeerGraph(nn.Module):
    """torchvision SSDLite320-MobileNetV3 without its own transform/postprocess: normalise, backbone,
    head, softmax without background, boxes decoded against its anchors, normalised xyxy."""

    def __init__(self, model: nn.Module, resolution: int = 320):
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.backbone, self.head, self.box_coder = model.backbone, model.head, model.box_coder
        mean, std = model.transform.image_mean, model.transform.image_std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        with torch.no_grad():
            x = torch.zeros(1, 3, resolution, resolution)
            features = list(self.backbone(x).values())
            anchors = model.anchor_generator(ImageList(x, [(resolution, resolution)]), features)[0]
        self.anchors = anchors / resolution  # xyxy, normalised; a constant in the trace
        self.resolution = resolution

    def forward(self, images):
        features = list(self.backbone((images - self.mean) / self.std).values())
        out = self.head(features)
        scores = torch.softmax(out["cls_logits"], dim=-1)[..., 1:]
        boxes = self.box_coder.decode_single(out["bbox_regression"][0], self.anchors)[None]
        return scores, boxes


def count_macs(model: nn.Module, resolution: int) -> int:
    """Conv2d / Linear multiply-adds of one batch-1 forward (same rule as lpdet.models.profile)."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            per_pixel = k_h * k_w * (module.in_channels // module.groups) * module.out_channels
            total += per_pixel * output.shape[-2] * output.shape[-1]
        else:
            total += module.in_features * module.out_features * (output.numel() // module.out_features)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, resolution, resolution))
    finally:
        for h in hooks:
            h.remove()
    return total


def _metadata(arch: str, resolution: int) -> dict:
    return {"class_names": [f"class{i}" for i in range(1, NUM_CLASSES + 1)],
            "category_ids": list(range(1, NUM_CLASSES + 1)), "benchmark": True, "arch": arch}


def export_peer(path: Path) -> tuple[Path, int]:
    import warnings

    import onnx
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    graph = _PeerGraph(model).eval()
    macs = count_macs(graph, 320)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.rand(1, 3, 320, 320),), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["scores", "boxes"])
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key = "lpdet"
    entry.value = json.dumps({**_metadata(PEER, 320), "resolution": 320, "num_classes": NUM_CLASSES,
                              "quantization": "fp32"})
    onnx.save(proto, str(path))
    return path, macs


def build(out: Path, calibration: int, peer_int8: bool) -> list[Entry]:
    from lpdet.deploy.export import export_onnx
    from lpdet.models.profile import profile_detector
    from lpdet.models.config import ModelConfig
    from lpdet.models.registry import build_detector
    from lpdet.deploy.ptq import quantize_calibrated

    entries = []
    generator = torch.Generator().manual_seed(0)
    for arch, resolution in OURS:
        torch.manual_seed(0)
        detector = build_detector(ModelConfig(arch, NUM_CLASSES, width=1.0, resolution=resolution)).eval()
        macs = profile_detector(detector).macs
        stem = f"{arch}_{resolution}"
        fp32 = export_onnx(detector, out / f"{stem}_fp32.onnx", metadata=_metadata(arch, resolution))
        images = torch.rand(calibration, 3, resolution, resolution, generator=generator)
        int8 = quantize_calibrated(fp32, out / f"{stem}_int8.onnx", images)
        entries.append(Entry(f"{arch} @{resolution}", resolution, macs, fp32, int8))
        print(f"built {stem}: {macs / 1e9:.3f} GMACs", flush=True)
    fp32, macs = export_peer(out / "peer_fp32.onnx")
    int8 = None
    if peer_int8:
        try:
            images = torch.rand(calibration, 3, 320, 320, generator=generator)
            int8 = quantize_calibrated(fp32, out / "peer_int8.onnx", images)
        except Exception as e:  # the peer's hardswish/SE blocks are not ours to support
            print(f"peer int8 failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    entries.append(Entry("tv ssdlite320_mnv3_large (peer)", 320, macs, fp32, int8))
    print(f"built peer: {macs / 1e9:.3f} GMACs", flush=True)
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="exactly this many rounds (default: until ±3%% or --time-cap)")
    parser.add_argument("--time-cap", type=float, default=120.0, help="seconds of timing at most")
    parser.add_argument("--data", help="time on this dataset's val images (default: seeded noise)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--calibration", type=int, default=8, help="random calibration images for int8")
    parser.add_argument("--peer-int8", action="store_true", help="also quantize the torchvision peer")
    parser.add_argument("--out", type=Path, help="keep the ONNX models here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(max(args.threads, 1))

    from lpdet.deploy.latency import StopRule, compare_latency, cpu_name
    from lpdet.deploy.latency_inputs import bench_images

    with tempfile.TemporaryDirectory(prefix="lpdet-latency-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        entries = build(out, args.calibration, args.peer_int8)
        paths, baselines, owners = [], [], []
        for i, entry in enumerate(entries):
            base = len(paths)
            paths.append(entry.fp32)
            baselines.append(base)
            owners.append((i, "fp32"))
            if entry.int8 is not None:
                paths.append(entry.int8)
                baselines.append(base)
                owners.append((i, "int8"))
        print(f"timing {len(paths)} models interleaved, {args.threads} thread(s) ...", flush=True)
        rule = StopRule.fixed(args.runs) if args.runs else StopRule(time_cap_s=args.time_cap)
        comparison = compare_latency(paths, images=bench_images(data=args.data), threads=args.threads, rule=rule,
                                     warmup=args.warmup, baselines=baselines)
        results = comparison.results

    table = {}
    for (i, precision), result in zip(owners, results):
        table.setdefault(i, {})[precision] = result
    print(f"\nbatch 1, {args.threads} thread(s), onnxruntime CPU (ORT_ENABLE_ALL), {comparison.rounds} interleaved "
          f"rounds in {comparison.seconds:.0f} s (stopped: {comparison.stop_reason}); {results[0].inputs}\n"
          f"{cpu_name()}\n"
          "graph = the ONNX graph (ratios: median of per-iteration int8/fp32 graph times); e2e = graph + our NMS "
          "(select_detections),\nwhich on random weights depends on the init: ours start at a 0.99 background prior "
          "(few candidates), the peer\nat uniform scores (every class above the 0.01 threshold), so NMS is not "
          "comparable "
          "across them here.\n")
    header = (f"{'model':<34}{'GMACs':>7}{'graph fp32':>11}{'graph int8':>11}{'int8/fp32':>10}"
              f"{'GMAC/s fp32':>12}{'GMAC/s int8':>12}{'e2e fp32':>10}{'e2e int8':>10}{'NMS':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for i, entry in enumerate(entries):
        fp32, int8 = table[i]["fp32"], table[i].get("int8")
        gmacs = entry.macs / 1e9
        row = {"model": entry.name, "resolution": entry.resolution, "gmacs": round(gmacs, 4),
               "fp32_graph_ms": round(fp32.forward_ms, 3), "fp32_e2e_ms": round(fp32.median_ms, 3),
               "fp32_gmac_per_s": round(gmacs / (fp32.forward_ms / 1e3), 2),
               "fp32_e2e_interval_ms": fp32.median_interval_ms, "postprocess_ms": round(fp32.postprocess_ms, 3)}
        cells = f"{entry.name:<34}{gmacs:>7.3f}{fp32.forward_ms:>11.2f}"
        if int8 is not None:
            row.update(int8_graph_ms=round(int8.forward_ms, 3), int8_e2e_ms=round(int8.median_ms, 3),
                       int8_e2e_interval_ms=int8.median_interval_ms,
                       int8_over_fp32=round(int8.forward_ratio, 3), int8_over_fp32_e2e=round(int8.ratio, 3),
                       int8_over_fp32_e2e_interval=int8.ratio_interval,
                       int8_gmac_per_s=round(gmacs / (int8.forward_ms / 1e3), 2))
            cells += (f"{int8.forward_ms:>11.2f}{int8.forward_ratio:>10.3f}{row['fp32_gmac_per_s']:>12.1f}"
                      f"{row['int8_gmac_per_s']:>12.1f}{fp32.median_ms:>10.2f}{int8.median_ms:>10.2f}")
        else:
            cells += f"{'-':>11}{'-':>10}{row['fp32_gmac_per_s']:>12.1f}{'-':>12}{fp32.median_ms:>10.2f}{'-':>10}"
        cells += f"{fp32.postprocess_ms:>7.2f}"
        print(cells)
        rows.append(row)
    ratios = ", ".join(f"{r['model']}: {r['int8_over_fp32']:.2f}" for r in rows if "int8_over_fp32" in r)
    print(f"\nint8/fp32 graph latency (paired median): {ratios}")
    e2e = ", ".join(f"{entry.name}: {table[i]['int8'].ratio_to_baseline.text(3)}"
                    for i, entry in enumerate(entries) if "int8" in table[i])
    print(f"int8/fp32 end to end (paired median, 95% interval): {e2e}")
    if args.json:
        args.json.write_text(json.dumps({"device": cpu_name(), "threads": args.threads, "rounds": comparison.rounds,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
