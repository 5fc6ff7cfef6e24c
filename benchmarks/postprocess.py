"""Post-processing cost vs end-to-end int8 latency, on real (synthetic-dataset) validation images.

In one run, for MobileNetV2-SSDLite (width 1.0) at 300 exported to int8 ONNX (calibrated PTQ of a
float checkpoint, or of a random-init model when no --checkpoint is given), image by image:
  graph     the int8 graph alone (onnxruntime, raw scores and boxes)
  before    select_detections as it was before issue 17 (kept below, verbatim, as the baseline)
  per-class select_detections now (default settings: identical detections, ties aside)
  agnostic  select_detections with class_agnostic=True (one class per anchor, TF Lite's fast NMS)
  in-graph  the same int8 graph with NMS appended (`lpdet export --nms-in-graph`), end to end
Every iteration runs all of them on the same image, in a rotating order, so drift on a shared
machine hits them alike. Reported: medians with distribution-free 95% intervals, the
post-processing share of end-to-end (per-iteration ratio post / (graph + post)), the in-graph
model's time over graph + per-class Python, and whether the implementations' detections agree.
Settings: score > 0.01, NMS IoU 0.6, 100 detections (the defaults).

NMS cost depends on how many (anchor, class) scores pass the threshold: the report gives that
count per image. A random-init model sits at a 0.99 background prior (no candidates at all), so
without --checkpoint the model is first fitted for --fit-steps SGD steps on a few training images
(scores move off the prior around objects; far from a trained AP: pass a trained checkpoint for
the real thing). --uniform-scores zeroes the class head's bias: nearly every (anchor, class) score
passes 0.01, the most work NMS can get (each class capped at pre_nms_top_k = 100 candidates).

    python benchmarks/postprocess.py [--checkpoint CKPT | --fit-steps 60] [--uniform-scores]
                                     [--data synth|data.yaml] [--images 50] [--rounds 4] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms

ARCH, WIDTH, RESOLUTION = "mobilenet_v2_ssdlite", 1.0, 300


def select_detections_before(scores, boxes, cfg):
    """select_detections as of commit 667a571 (before issue 17), the baseline timed here."""
    scores = scores.float()
    boxes = boxes.float().clamp(0.0, 1.0)
    num_anchors, num_classes = scores.shape[1:]
    candidates = min(cfg.pre_nms_top_k, num_anchors)
    class_labels = torch.arange(1, num_classes + 1, device=scores.device).expand(candidates, num_classes)
    results = []
    for image_scores, image_boxes in zip(scores, boxes):
        top_scores, top_anchors = image_scores.topk(candidates, dim=0)
        keep = top_scores > cfg.score_threshold
        cand_scores, cand_labels = top_scores[keep], class_labels[keep]
        cand_boxes = image_boxes[top_anchors[keep]]
        wh = cand_boxes[:, 2:] - cand_boxes[:, :2]
        nonempty = (wh > 0).all(dim=1)
        cand_boxes, cand_scores, cand_labels = cand_boxes[nonempty], cand_scores[nonempty], cand_labels[nonempty]
        kept = batched_nms(cand_boxes, cand_scores, cand_labels, cfg.nms_iou)[: cfg.top_k]
        results.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": cand_labels[kept]})
    return results


def median_interval(values) -> tuple[float, float, float]:
    """Median and its distribution-free 95% interval (order statistics, normal approximation of the binomial)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half) - 1), min(n - 1, math.ceil(n / 2 + half))
    return float(np.median(x)), float(x[lo]), float(x[hi])


def _fmt(values, scale=1e3, unit="ms", digits=3) -> str:
    m, lo, hi = median_interval(np.asarray(values) * scale)
    return f"{m:.{digits}f} {unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fit_briefly(detector, spec, steps: int, resolution: int = 160, n_images: int = 16) -> None:
    """`steps` SGD steps (batch 8) on `n_images` training images at a low `resolution` (cheap; the
    weights do not depend on the input size): enough to move the scores off the background prior
    so that NMS sees candidates around objects, as with a trained model, far from a trained AP."""
    from lpdet.data.coco import CocoDetection
    from lpdet.data.transforms import eval_transforms
    from lpdet.models.loss import multibox_loss

    split = spec.train or spec.val
    dataset = CocoDetection(split.annotations, split.images, transform=eval_transforms(resolution))
    items = [dataset[i] for i in range(min(n_images, len(dataset)))]
    images = torch.stack([image for image, _ in items])
    targets = [{"boxes": t["boxes"] / resolution, "labels": t["labels"]} for _, t in items]
    detector.set_resolution(resolution)
    detector.train()
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        first = (step * 8) % len(items)
        batch = list(range(first, min(first + 8, len(items))))
        cls_logits, box_deltas = detector(images[batch])
        loss = multibox_loss(cls_logits, box_deltas, [targets[i] for i in batch], detector.anchors)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == steps - 1:
            print(f"fit step {step + 1}/{steps}: loss {loss.item():.2f}", flush=True)
    detector.set_resolution(RESOLUTION)
    detector.eval()


def build_models(out: Path, checkpoint: Path | None, data: str, calibration: int, fit_steps: int,
                 uniform: bool) -> tuple[Path, Path, str]:
    """int8 ONNX of the model at 300 and the same with NMS appended; returns (int8, int8+NMS, what it is)."""
    from lpdet.data.coco import CocoDetection
    from lpdet.data.spec import resolve_dataset
    from lpdet.data.transforms import eval_transforms
    from lpdet.deploy.export import export_onnx
    from lpdet.deploy.nms_graph import append_nms_to_file
    from lpdet.deploy.ptq import calibration_batch, quantize_calibrated

    spec = resolve_dataset(data)
    if checkpoint is not None:
        from lpdet.deploy.runtime import load_detector

        detector, ckpt = load_detector(checkpoint, resolution=RESOLUTION)
        if (detector.config.arch, detector.config.width) != (ARCH, WIDTH):
            print(f"note: {checkpoint} is {detector.config.arch} width {detector.config.width}, not {ARCH} {WIDTH}")
        metadata = {"class_names": ckpt.class_names, "category_ids": ckpt.category_ids}
        what = (f"{checkpoint} ({detector.config.arch} width {detector.config.width:g}, "
                f"step {ckpt.train_state.get('global_step')})")
    else:
        from lpdet.models.registry import ModelConfig, build_detector

        names = CocoDetection(spec.val.annotations, spec.val.images).class_names
        torch.manual_seed(0)
        detector = build_detector(ModelConfig(ARCH, len(names), width=WIDTH, resolution=RESOLUTION))
        metadata = {"class_names": names, "category_ids": list(range(1, len(names) + 1))}
        what = (f"{ARCH} width {WIDTH:g}, random init (background prior 0.99: few candidates; pass --checkpoint "
                f"for a trained model)")
        if fit_steps:
            fit_briefly(detector, spec, fit_steps)
            what = f"random init fitted for {fit_steps} steps on 16 training images at 160 (scores off the prior)"
    if uniform:  # the class head's bias zeroed: no background prior, every class ~1/(K+1) everywhere
        with torch.no_grad():
            for conv in detector.cls_head.output_convs():
                conv.bias.zero_()
        what += "; class bias zeroed (worst case: most (anchor, class) scores pass 0.01)"
    detector.eval()
    split = spec.train or spec.val
    images = calibration_batch(CocoDetection(split.annotations, split.images, transform=eval_transforms(RESOLUTION)),
                               calibration)
    fp32 = export_onnx(detector, out / "fp32.onnx", metadata=metadata)
    int8 = quantize_calibrated(fp32, out / "int8.onnx", images)
    return int8, append_nms_to_file(int8, out / "int8_nms.onnx"), what


def val_images(data: str, n: int) -> list[torch.Tensor]:
    from lpdet.data.coco import CocoDetection
    from lpdet.data.spec import resolve_dataset
    from lpdet.data.transforms import eval_transforms

    spec = resolve_dataset(data)
    dataset = CocoDetection(spec.val.annotations, spec.val.images, transform=eval_transforms(RESOLUTION))
    return [dataset[i][0][None] for i in range(min(n, len(dataset)))]


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))


def _same_set(a: dict, b: dict) -> bool:
    """The same detections, in any order (the old code ordered equal scores arbitrarily)."""
    def rows(d):
        return sorted(zip(d["scores"].tolist(), d["labels"].tolist(), map(tuple, d["boxes"].tolist())))
    return rows(a) == rows(b)


def measure(int8_path: Path, nms_path: Path, images: list[torch.Tensor], rounds: int, threads: int) -> dict:
    from lpdet.deploy.runtime import load_model
    from lpdet.models.postprocess import PostprocessConfig, select_detections

    graph, in_graph = load_model(int8_path, threads=threads), load_model(nms_path, threads=threads)
    cfg = PostprocessConfig()
    agnostic = replace(cfg, class_agnostic=True)
    posts = {"before": lambda s, b: select_detections_before(s, b, cfg),
             "per-class": lambda s, b: select_detections(s, b, cfg),
             "agnostic": lambda s, b: select_detections(s, b, agnostic)}
    times = {k: [] for k in ("graph", *posts, "in-graph")}
    facts = {"candidates": [], "detections": [], "agnostic_detections": [], "before_same": 0, "before_same_set": 0,
             "in_graph_same": 0}
    steps = [*posts, "in-graph"]
    with torch.inference_mode():
        for image in images[:3]:  # warm-up (untimed)
            scores, boxes = graph.forward(image)
            [f(scores, boxes) for f in posts.values()]
            in_graph.predict(image)
        iteration = 0
        for r in range(rounds):
            for image in images:
                start = time.perf_counter()
                scores, boxes = graph.forward(image)
                times["graph"].append(time.perf_counter() - start)
                out = {}
                shift = iteration % len(steps)
                for name in steps[shift:] + steps[:shift]:  # rotating order
                    start = time.perf_counter()
                    out[name] = in_graph.predict(image)[0] if name == "in-graph" else posts[name](scores, boxes)[0]
                    times[name].append(time.perf_counter() - start)
                iteration += 1
                if r == 0:
                    facts["candidates"].append(int((scores > cfg.score_threshold).sum()))
                    facts["detections"].append(len(out["per-class"]["scores"]))
                    facts["agnostic_detections"].append(len(out["agnostic"]["scores"]))
                    facts["before_same"] += _same(out["before"], out["per-class"])
                    facts["before_same_set"] += _same_set(out["before"], out["per-class"])
                    facts["in_graph_same"] += _same(out["in-graph"], out["per-class"])
    return {"times": {k: np.asarray(v) for k, v in times.items()}, "facts": facts}


def report(result: dict, images: int, rounds: int, threads: int, what: str) -> dict:
    from lpdet.deploy.latency import cpu_name

    t, facts = result["times"], result["facts"]
    cand = np.asarray(facts["candidates"])
    print(f"\n@{RESOLUTION}, int8 (calibrated PTQ) of {what}")
    print(f"{cpu_name()}; onnxruntime, {threads} thread(s); {images} val images x {rounds} rounds, interleaved")
    print(f"candidates per image (anchor, class) above 0.01: median {np.median(cand):.0f}, mean {cand.mean():.0f}, "
          f"max {cand.max()}; detections per image: mean {np.mean(facts['detections']):.1f} (per class), "
          f"{np.mean(facts['agnostic_detections']):.1f} (agnostic)")
    print(f"same detections: before == per-class on {facts['before_same']}/{images} images "
          f"({facts['before_same_set']}/{images} in any order of equal scores), "
          f"in-graph == per-class on {facts['in_graph_same']}/{images}\n")
    summary = {"device": cpu_name(), "threads": threads, "images": images, "rounds": rounds, "model": what,
               "candidates_median": float(np.median(cand)), "candidates_max": int(cand.max()),
               "before_same_images": facts["before_same"],
               "before_same_set_images": facts["before_same_set"], "in_graph_same_images": facts["in_graph_same"]}
    print(f"{'step':<34}{'median [95% interval]':>30}{'share of end-to-end':>34}")
    print(f"{'int8 graph (raw scores, boxes)':<34}{_fmt(t['graph']):>30}")
    for name in ("before", "per-class", "agnostic"):
        share = t[name] / (t["graph"] + t[name])
        print(f"{'post-processing ' + name:<34}{_fmt(t[name]):>30}{_fmt(share, 100, '%', 1):>34}")
        m, lo, hi = median_interval(t[name] * 1e3)
        s, slo, shi = median_interval(share)
        summary[name] = {"ms": [m, lo, hi], "share": [s, slo, shi]}
    e2e = t["graph"] + t["per-class"]
    print(f"{'end to end: graph + per-class':<34}{_fmt(e2e):>30}")
    print(f"{'end to end: NMS in the graph':<34}{_fmt(t['in-graph']):>30}")
    ratio = median_interval(t["in-graph"] / e2e)
    speedup = median_interval(t["before"] / t["per-class"])
    print(f"\nin-graph / (graph + per-class Python), per-iteration: {ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]")
    print(f"before / per-class post-processing, per-iteration:    {speedup[0]:.2f}x [{speedup[1]:.2f}, {speedup[2]:.2f}]")
    # NMS in the graph: its cost is what the deployed file takes beyond the bare graph, per image.
    in_graph_post, in_graph_share = t["in-graph"] - t["graph"], (t["in-graph"] - t["graph"]) / t["in-graph"]
    print(f"post-processing in the graph (in-graph minus graph, per image): {_fmt(in_graph_post)}, "
          f"share {_fmt(in_graph_share, 100, '%', 1)}")
    summary["in_graph_post"] = {"ms": list(median_interval(in_graph_post * 1e3)),
                                "share": list(median_interval(in_graph_share))}
    for form, share in (("per-class Python", summary["per-class"]["share"]),
                        ("NMS in the graph", summary["in_graph_post"]["share"])):
        print(f"goal (post-processing <= 10% of end-to-end), {form}: {'met' if share[2] <= 0.10 else 'NOT met'} "
              f"(share {share[0]:.1%}, interval up to {share[2]:.1%})")
    summary.update(end_to_end_ms=list(median_interval(e2e * 1e3)), in_graph_ms=list(median_interval(t["in-graph"] * 1e3)),
                   in_graph_over_python=list(ratio), before_over_per_class=list(speedup))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="float checkpoint (default: random init)")
    parser.add_argument("--data", default="synth", help="dataset YAML or 'synth' (val images timed, train calibrates)")
    parser.add_argument("--images", type=int, default=50, help="validation images")
    parser.add_argument("--rounds", type=int, default=4, help="passes over the images")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op and torch threads")
    parser.add_argument("--calibration", type=int, default=16, help="training images calibrating int8")
    parser.add_argument("--fit-steps", type=int, default=60,
                        help="without --checkpoint: fit the random-init model this many steps first (0: none)")
    parser.add_argument("--uniform-scores", action="store_true",
                        help="zero the class head's bias (worst case for NMS: nearly every score passes 0.01)")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON")
    args = parser.parse_args()
    torch.set_num_threads(max(args.threads, 1))
    with tempfile.TemporaryDirectory(prefix="lpdet-postprocess-") as tmp:
        int8, with_nms, what = build_models(Path(tmp), args.checkpoint, args.data, args.calibration, args.fit_steps,
                                            args.uniform_scores)
        images = val_images(args.data, args.images)
        result = measure(int8, with_nms, images, args.rounds, args.threads)
    summary = report(result, len(images), args.rounds, args.threads, what)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
