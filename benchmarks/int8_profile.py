"""Where the time of an int8 and an fp32 graph goes: onnxruntime's per-node profile, by kind of op.

Builds MobileNetV2-SSDLite @300 (width 1.0, 90 classes, random init; as `benchmarks/latency.py`)
as fp32 ONNX and calibrated-PTQ int8 (or takes `--fp32 A.onnx --int8 B.onnx`), opens both with
lpdet's session options (`lpdet.deploy.runtime.onnx_session`, ORT_ENABLE_ALL, one thread) plus
onnxruntime's profiler (`SessionOptions.enable_profiling`), runs them interleaved on the same
inputs, and sums each node's kernel time per run. Nodes are grouped by what they do, read from
the graph onnxruntime actually runs (its optimised model: fused QLinearConv, NCHWc convs, ...):

  input normalisation                    float ops before the first convolution (mean/std, stem padding)
  conv depthwise / pointwise / regular   a Conv-like node's group == channels, 1x1 group 1, else
  QuantizeLinear, DequantizeLinear       int8 <-> float boundaries
  layout                                 Transpose, Reshape, Concat, Slice, NCHWc reorders, ...
  add                                    residual adds (QLinearAdd in int8)
  softmax, box decoding                  the float tail: nodes no convolution depends on
  other                                  whatever is left (named in --by-op)

"float tail" is the set of nodes no convolution reads from (softmax, box decoding and the head
outputs' layout ops): calibrated PTQ leaves exactly those in float, so their share of the fp32
graph's time is the part int8 cannot speed up. Each node's time is its median over the runs (robust to
pre-emption by other jobs); a graph's total is the sum of its nodes' medians, not wall time. On a
shared machine compare shares and int8/fp32 ratios, not absolute microseconds.

    python benchmarks/int8_profile.py [--fp32 A.onnx --int8 B.onnx] [--runs 100] [--by-op] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import torch

LAYOUT = {"Transpose", "Reshape", "Concat", "Slice", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Split",
          "ReorderInput", "ReorderOutput", "Pad", "Identity", "Shape"}
CONVS = {"Conv", "QLinearConv", "FusedConv", "NhwcFusedConv", "ConvInteger"}
ADDS = {"Add", "QLinearAdd", "Sum"}
KINDS = ("input normalisation", "conv depthwise", "conv pointwise", "conv regular", "QuantizeLinear",
         "DequantizeLinear", "layout", "add", "softmax", "box decoding", "other")


def _attr(node, name, default=None):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def conv_kind(node, shapes: dict) -> str:
    """depthwise (group == output channels > 1), pointwise (1x1, group 1) or regular."""
    weight_index = 3 if node.op_type == "QLinearConv" else 1
    weight = shapes.get(node.input[weight_index]) if len(node.input) > weight_index else None
    group = int(_attr(node, "group", 1))
    if weight is not None and group > 1 and group == weight[0]:
        return "conv depthwise"
    kernel = list(_attr(node, "kernel_shape", []) or (weight[2:] if weight is not None else []))
    return "conv pointwise" if group == 1 and kernel and all(k == 1 for k in kernel) else "conv regular"


def float_tail(graph) -> set[str]:
    """Names of the nodes that are no convolution and from which none can be reached (the softmax /
    decode tail; the heads' last convolutions are not in it)."""
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    feeds: dict[str, bool] = {}
    for node in reversed(list(graph.node)):  # onnxruntime saves its optimised graph topologically sorted
        feeds[node.name] = node.op_type in CONVS or any(feeds.get(c.name, False)
                                                        for out in node.output for c in consumers[out])
    return {name for name, reaches in feeds.items() if not reaches}


def before_convs(graph) -> set[str]:
    """Names of the float nodes no convolution precedes (the image's mean/std normalisation, the
    stem's padding), Q/DQ aside."""
    after: set[str] = set()
    produced_after: set[str] = set()
    for node in graph.node:  # topologically sorted
        if node.op_type in CONVS or any(name in produced_after for name in node.input):
            after.add(node.name)
            produced_after.update(node.output)
    return {n.name for n in graph.node if n.name not in after and n.op_type not in ("QuantizeLinear", "DequantizeLinear")}


def node_kinds(optimized: Path) -> dict[str, tuple[str, str]]:
    """node name -> (kind, op type) for the graph onnxruntime runs."""
    model = onnx.load(str(optimized), load_external_data=False)
    graph = model.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    tail, head = float_tail(graph), before_convs(graph)
    kinds = {}
    for node in graph.node:
        op = node.op_type
        if node.name in head:
            kind = "input normalisation"
        elif node.name in tail and op not in ("QuantizeLinear", "DequantizeLinear"):
            kind = "softmax" if op == "Softmax" else "layout" if op in LAYOUT else "box decoding"
        elif op in CONVS:
            kind = conv_kind(node, shapes)
        elif op in ("QuantizeLinear", "DequantizeLinear"):
            kind = op
        elif op in LAYOUT:
            kind = "layout"
        elif op in ADDS:
            kind = "add"
        else:
            kind = "other"
        kinds[node.name] = (kind, op, node.name in tail)
    return kinds


def _session(path: Path, folder: Path, tag: str, exact: bool | None):
    """lpdet's session with onnxruntime's profiler on; also saves the optimised graph it runs."""
    from lpdet.deploy.runtime import onnx_session

    optimized = folder / f"{tag.replace(' ', '_')}_optimized.onnx"
    session = onnx_session(path, threads=1, optimized_model=optimized, profile=folder / tag.replace(" ", "_"),
                           exact_int8_kernels=exact)
    return session, optimized


def profile(models: dict[str, tuple[Path, bool | None]], runs: int, warmup: int, folder: Path, seed: int = 0) -> dict:
    """Per-run kernel microseconds by node for each model (tag -> (path, exact int8 kernels)), run
    interleaved on the same inputs."""
    sessions = {tag: _session(path, folder, tag, exact) for tag, (path, exact) in models.items()}
    rng = np.random.default_rng(seed)
    shape = [d if isinstance(d, int) else 1 for d in next(iter(sessions.values()))[0].get_inputs()[0].shape]
    inputs = [rng.random(shape, dtype=np.float32) for _ in range(8)]
    for k in range(warmup + runs):
        for session, _ in sessions.values():
            session.run(None, {"images": inputs[k % len(inputs)]})
    result = {}
    for tag, (session, optimized) in sessions.items():
        trace = json.loads(Path(session.end_profiling()).read_text())
        durations = defaultdict(list)
        for event in trace:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                durations[event["name"][: -len("_kernel_time")]].append(event["dur"])
        # The trace has the warm-up runs too. A node's median over runs, not its mean: on a shared
        # machine a run pre-empted mid-node charges that node the other job's time slice.
        per_run = {name: float(np.median(d[warmup:])) for name, d in durations.items() if len(d) > warmup}
        result[tag] = {"per_node_us": per_run, "kinds": node_kinds(optimized), "runs": runs}
    return result


def summarise(profiled: dict) -> dict:
    """Per model: microseconds and share by kind, by op type, and in the float tail."""
    summary = {}
    for tag, data in profiled.items():
        by_kind, by_op = defaultdict(float), defaultdict(float)
        tail_us = 0.0
        for name, us in data["per_node_us"].items():
            kind, op, in_tail = data["kinds"].get(name, ("other", "?", False))
            by_kind[kind] += us
            by_op[op] += us
            tail_us += us if in_tail else 0.0
        total = sum(by_kind.values())
        summary[tag] = {"total_us": total, "runs": data["runs"],
                        "by_kind_us": {k: by_kind.get(k, 0.0) for k in KINDS},
                        "by_op_us": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
                        "float_tail_us": tail_us}
    return summary


def format_table(summary: dict, by_op: bool) -> str:
    tags = list(summary)
    lines = [f"{'kind':<20}" + "".join(f"{t + ' us':>16}{t + ' %':>14}" for t in tags)
             + ("".join(f"{'int8/fp32':>11}") if set(tags) >= {"fp32", "int8"} else "")]
    lines.append("-" * len(lines[0]))

    def row(label, values):
        cells = f"{label:<20}"
        for t, v in zip(tags, values):
            cells += f"{v:>16.1f}{100 * v / summary[t]['total_us']:>14.1f}"
        if set(tags) >= {"fp32", "int8"}:
            f, i = values[tags.index("fp32")], values[tags.index("int8")]
            cells += f"{(i / f if f else float('nan')):>11.2f}"
        return cells

    for kind in KINDS:
        lines.append(row(kind, [summary[t]["by_kind_us"][kind] for t in tags]))
    lines.append(row("float tail (of it)", [summary[t]["float_tail_us"] for t in tags]))
    lines.append(row("total", [summary[t]["total_us"] for t in tags]))
    if by_op:
        ops = sorted({op for t in tags for op in summary[t]["by_op_us"]},
                     key=lambda op: -max(summary[t]["by_op_us"].get(op, 0.0) for t in tags))
        lines.append("")
        lines.append("by op type (as onnxruntime runs it)")
        for op in ops:
            lines.append(row(op, [summary[t]["by_op_us"].get(op, 0.0) for t in tags]))
    return "\n".join(lines)


def comparison_labels(exact_kernels: bool) -> list[str]:
    return ["fp32", "int8"] + (["int8 exact kernels"] if exact_kernels else [])


def latency(paths: dict[str, Path], exact_kernels: bool, time_cap: float):
    """fp32, int8 (and int8 with the exact kernels) timed by lpdet's harness, interleaved, on noise."""
    import contextlib
    import functools

    from lpdet.deploy import runtime
    from lpdet.deploy.latency import StopRule, compare_latency

    @contextlib.contextmanager
    def exact(flag):  # load_model has no such option: it decides from the CPU
        original = runtime.onnx_session
        runtime.onnx_session = functools.partial(original, exact_int8_kernels=flag)
        try:
            yield
        finally:
            runtime.onnx_session = original

    models = []
    for tag, flag in (("fp32", None), ("int8", False)) + ((("int8", True),) if exact_kernels else ()):
        with exact(flag):
            models.append(runtime.load_model(paths[tag], threads=1))
    return compare_latency(models, threads=1, rule=StopRule(time_cap_s=time_cap))


def build(out: Path, arch: str, resolution: int, calibration: int) -> dict[str, Path]:
    """fp32 and calibrated-PTQ int8 of a random-init detector, as benchmarks/latency.py builds them."""
    from lpdet.deploy.export import export_onnx
    from lpdet.deploy.ptq import quantize_calibrated
    from lpdet.models.config import ModelConfig
    from lpdet.models.registry import build_detector

    torch.manual_seed(0)
    detector = build_detector(ModelConfig(arch, 90, width=1.0, resolution=resolution)).eval()
    metadata = {"class_names": [f"class{i}" for i in range(1, 91)], "category_ids": list(range(1, 91))}
    fp32 = export_onnx(detector, out / f"{arch}_{resolution}_fp32.onnx", metadata=metadata)
    images = torch.rand(calibration, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    return {"fp32": fp32, "int8": quantize_calibrated(fp32, out / f"{arch}_{resolution}_int8.onnx", images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, help="an fp32 ONNX from lpdet export (with --int8)")
    parser.add_argument("--int8", type=Path, help="its int8 ONNX (with --fp32)")
    parser.add_argument("--arch", default="mobilenet_v2_ssdlite")
    parser.add_argument("--resolution", type=int, default=300)
    parser.add_argument("--calibration", type=int, default=8, help="random calibration images for int8")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--by-op", action="store_true", help="also list every op type")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON")
    parser.add_argument("--exact-kernels", action="store_true",
                        help="also run int8 with onnxruntime's exact x86 kernels (session.x64quantprecision)")
    parser.add_argument("--latency", action="store_true", help="also time the models with compare_latency")
    parser.add_argument("--time-cap", type=float, default=120.0, help="seconds of --latency timing at most")
    args = parser.parse_args()
    if (args.fp32 is None) != (args.int8 is None):
        parser.error("--fp32 and --int8 go together")
    torch.set_num_threads(1)

    from lpdet.deploy.latency import cpu_name

    with tempfile.TemporaryDirectory(prefix="lpdet-int8-profile-") as tmp:
        folder = Path(tmp)
        paths = {"fp32": args.fp32, "int8": args.int8} if args.fp32 else \
            build(folder, args.arch, args.resolution, args.calibration)
        models = {"fp32": (paths["fp32"], None), "int8": (paths["int8"], False)}
        if args.exact_kernels:
            models["int8 exact"] = (paths["int8"], True)
        summary = summarise(profile(models, args.runs, args.warmup, folder))
        if args.latency:
            comparison = latency(paths, args.exact_kernels, args.time_cap)
    print(f"{cpu_name()}; onnxruntime profiler, 1 thread, {args.runs} interleaved runs (after {args.warmup} "
          f"warm-up); median kernel microseconds per node summed, share of the graph's summed kernel time\n")
    print(format_table(summary, args.by_op))
    if args.latency:
        from lpdet.deploy.latency import format_comparison

        print(f"\nlpdet's harness (compare_latency), interleaved, 1 thread; ratios to fp32 ({comparison.rounds} rounds, "
              f"stopped: {comparison.stop_reason}):")
        for label, result in zip(comparison_labels(args.exact_kernels), comparison.results):
            print(f"  {label:<24} graph/fp32 {result.forward_ratio:.3f}   end to end/fp32 "
                  f"{result.ratio_to_baseline.text(3)}")
    if args.json:
        args.json.write_text(json.dumps({"device": cpu_name(), "models": {k: str(v) for k, v in paths.items()},
                                         "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
