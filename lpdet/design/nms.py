"""The NMS experiment (Table 11.3 of the seed): AP and end-to-end latency per NMS setting (IoU
threshold, score threshold, top-k) of one deployed model. Its experiment (`nms_sweep`) and table.

Every AP is COCO AP from pycocotools on the dataset's val split, computed on the deployed
model (`load_model(...).predict`); every latency is the median of `lpdet.deploy.latency.benchmark`
at batch 1 on this machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lpdet.data.loader import make_loader
from lpdet.data.splits import eval_split
from lpdet.deploy.latency import benchmark, cpu_name, latency_to_dict
from lpdet.deploy.runtime import load_model
from lpdet.design.noise import save_predictions
from lpdet.design.report import Table
from lpdet.design.tables import SIZE_METRICS, ap_or_none, write_sweep_files
from lpdet.design.trials import TrialCache, data_identity, dataset_yaml, file_identity
from lpdet.errors import LpdetError
from lpdet.eval.coco_eval import coco_metrics, detections_to_coco
from lpdet.models.postprocess import PostprocessConfig, select_detections
from lpdet.threads import torch_threads


@dataclass
class NmsRow:
    nms_iou: float
    score_threshold: float
    top_k: int
    metrics: dict[str, float]
    detections_per_image: float
    nms_ms: float  # median select_detections time per image on the real predictions
    forward_ms: float  # model forward median (benchmark)
    latency_ms: float  # forward_ms + nms_ms
    class_agnostic: bool = False  # one NMS over each anchor's best class (TF Lite's "fast NMS")
    predictions: str | None = None  # its val predictions file (`lpdet.design.noise`), when kept
    select_metrics: dict[str, float] | None = None  # on the selection split, when measured: the choice uses it

    @property
    def ap(self) -> float:
        return self.metrics.get("AP", float("nan"))

    @property
    def choice_ap(self) -> float:
        """The AP the choice is made on: the selection split's when measured, else val's."""
        return (self.select_metrics or self.metrics).get("AP", float("nan"))


@dataclass
class NmsSweep:
    rows: list[NmsRow]
    model: str
    data: str
    images: int
    threads: int
    runs: int
    device: str = ""
    forward_source: str = ""  # where the forward median comes from when it was measured elsewhere

    def best(self) -> NmsRow:
        """Highest AP on the selection split (val without one); ties (within 1e-4) go to the lower
        end-to-end latency."""
        top = max(r.choice_ap for r in self.rows)
        return min((r for r in self.rows if r.choice_ap >= top - 1e-4), key=lambda r: r.latency_ms)

    def find(self, nms_iou: float, score_threshold: float | None = None, top_k: int | None = None) -> NmsRow | None:
        for r in self.rows:
            if (abs(r.nms_iou - nms_iou) < 1e-9 and (score_threshold is None or abs(r.score_threshold - score_threshold) < 1e-9)
                    and (top_k is None or r.top_k == top_k)):
                return r
        return None

    def to_dict(self) -> dict:
        return asdict(self)


def _nms_settings(ious, score_thresholds, top_ks, class_agnostic=(False,)) -> list:
    default = PostprocessConfig()
    ious = list(ious)
    scores = list(score_thresholds) if score_thresholds else [default.score_threshold]
    tops = list(top_ks) if top_ks else [default.top_k]
    if not ious:
        raise LpdetError("--ious: give at least one IoU threshold")
    for v in ious:
        if not 0 < v <= 1:
            raise LpdetError(f"--ious: {v} is not in (0, 1]")
    for v in scores:
        if not 0 <= v < 1:
            raise LpdetError(f"--score-thresholds: {v} is not in [0, 1)")
    for v in tops:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise LpdetError(f"--top-ks: {v!r} is not a whole number >= 1")
    return [PostprocessConfig(score_threshold=float(s), nms_iou=float(i), top_k=int(k), class_agnostic=bool(a))
            for a in class_agnostic for i in ious for s in scores for k in tops]


def _measure_nms(model_path: Path, data: str | Path, settings: list, *, threads: int, max_images: int,
                 directory: Path | None = None, split: str = "val") -> dict:
    """One forward pass over `split`; per setting: select_detections on each image (timed), COCO AP; with
    `directory`, each setting's predictions kept there (``predictions-<j>.json``)."""
    model = load_model(model_path, threads=threads)
    dataset = eval_split(data, model.resolution, model.category_ids, split=split, where=str(model.path))
    subset = dataset
    if max_images and max_images < len(dataset):
        subset = torch.utils.data.Subset(dataset, range(max_images))
    results = [[] for _ in settings]
    times = [[] for _ in settings]
    counts = [0 for _ in settings]
    image_ids = []
    with torch_threads(threads), torch.inference_mode():
        for images, targets, _dropped in make_loader(subset, 8, shuffle=False, seed=0, epoch=0, workers=0):
            if not targets:
                continue
            scores, boxes = model.forward(images)
            image_ids.extend(int(t["image_id"]) for t in targets)
            for j, cfg in enumerate(settings):
                for b, target in enumerate(targets):
                    start = time.perf_counter()
                    dets = select_detections(scores[b:b + 1], boxes[b:b + 1], cfg)
                    times[j].append(time.perf_counter() - start)
                    counts[j] += len(dets[0]["scores"])
                    results[j].extend(detections_to_coco(dets, [target], dataset.category_ids))
    n = max(1, len(image_ids))
    rows = []
    for j, cfg in enumerate(settings):
        kept = None
        if directory is not None:
            kept = save_predictions(Path(directory) / f"predictions-{j}.json", results[j], image_ids).name
        rows.append({"nms_iou": cfg.nms_iou, "score_threshold": cfg.score_threshold, "top_k": cfg.top_k,
                     "class_agnostic": cfg.class_agnostic,
                     "metrics": coco_metrics(dataset.coco, results[j], image_ids=image_ids),
                     "detections_per_image": counts[j] / n,
                     "nms_ms": statistics.median(times[j]) * 1e3 if times[j] else 0.0, "predictions": kept})
    return {"rows": rows, "images": len(image_ids)}


def nms_sweep(model_path: Path | str, data: str | Path, ious: Sequence[float] = (0.30, 0.25, 0.20, 0.15, 0.10), *,
              score_thresholds: Sequence[float] | None = None, top_ks: Sequence[int] | None = None, threads: int = 1,
              runs: int = 30, warmup: int = 5, repeats: int = 3, max_images: int = 0, out_dir: Path | str | None = None,
              cache: TrialCache | None = None, name: str = "nms", progress: bool = True,
              select: bool = False, class_agnostic: Sequence[bool] = (False,), forward_ms: float | None = None,
              forward_source: str = "") -> NmsSweep:
    """AP and end-to-end latency per post-processing setting (every IoU × score threshold × top-k).

    Latency per image = the model's forward median (`benchmark`, batch 1, `threads` threads) +
    the median time of `select_detections` measured on the model's real predictions on val at
    that setting (the forward median: the lowest of `repeats` benchmarks). `forward_ms` (with
    `forward_source` saying how it was measured, e.g. the design's interleaved measurement of this
    graph) replaces that benchmark, so that every latency of a report comes from one measurement.
    With `out_dir`, writes ``nms_sweep.{md,json}`` there and caches the two trials
    (``<name>-bench``, ``<name>-sweep``) in ``out_dir/trials`` (or `cache`). With `select` (needs a
    `cache`), every setting's AP is also measured on the selection split (``<name>-sweep-select``) and
    `NmsSweep.best` chooses on it."""

    settings = _nms_settings(ious, score_thresholds, top_ks, class_agnostic)
    model_path = Path(model_path)
    if cache is None and out_dir is not None:
        cache = TrialCache(Path(out_dir) / "trials", progress=progress)
    if not (model_path.exists() or model_path.with_name(model_path.name + ".old").exists()):
        raise LpdetError(f"{model_path}: no such model; pass a checkpoint, run directory or .onnx file")
    data_path = dataset_yaml(data)
    spec = {"model": file_identity(model_path), "data": data_identity(data_path),
            "settings": [[c.nms_iou, c.score_threshold, c.top_k, c.class_agnostic] for c in settings],
            "max_images": max_images,
            "threads": threads}
    if cache is not None:
        cache.plan((3 if select else 2) - (forward_ms is not None))
        bench = {"forward_ms": forward_ms} if forward_ms is not None else cache.benchmark(
            f"{name}-bench", model_path, threads=threads, runs=runs, warmup=warmup, repeats=repeats,
            data=data_path)["latency"]
        spec["keeps"] = "predictions"  # trials cached before predictions were kept are redone
        measured = chosen_on = None
        for split in ("val", "select") if select else ("val",):
            chosen_on = cache.run(f"{name}-sweep" + ("" if split == "val" else f"-{split}"), {**spec, "split": split},
                                  lambda d, split=split: _measure_nms(model_path, data_path, settings, threads=threads,
                                                                      max_images=max_images, directory=d, split=split),
                                  kind="nms")
            measured = measured or chosen_on
        kept_in = cache.path(f"{name}-sweep")
    else:

        bench = {"forward_ms": forward_ms} if forward_ms is not None else latency_to_dict(
            benchmark(model_path, threads=threads, runs=runs, warmup=warmup, repeats=repeats))
        measured = chosen_on = _measure_nms(model_path, data_path, settings, threads=threads, max_images=max_images)
        kept_in = None
    forward = float(bench["forward_ms"])
    rows = [NmsRow(nms_iou=r["nms_iou"], score_threshold=r["score_threshold"], top_k=r["top_k"], metrics=r["metrics"],
                   detections_per_image=r["detections_per_image"], nms_ms=r["nms_ms"], forward_ms=forward,
                   latency_ms=forward + r["nms_ms"], class_agnostic=r.get("class_agnostic", False),
                   predictions=str(kept_in / r["predictions"]) if kept_in and r.get("predictions") else None,
                   select_metrics=c["metrics"] if chosen_on is not measured else None)
            for r, c in zip(measured["rows"], chosen_on["rows"])]
    sweep = NmsSweep(rows=rows, model=str(model_path), data=str(data), images=measured["images"], threads=threads,
                     runs=runs, device=cpu_name(), forward_source=forward_source if forward_ms is not None else "")
    if out_dir is not None:
        write_sweep_files(Path(out_dir), "nms_sweep", "NMS sweep", [nms_table(sweep)], [], sweep.to_dict())
    return sweep


def nms_table(sweep: NmsSweep, *, title: str = "AP and latency vs NMS setting",
              intervals: list[str | None] | None = None) -> Table:
    """Table 11.3: one row per NMS setting; `intervals` (one text per row) adds its AP minus the
    baseline's with an interval."""
    extra = ["Δ AP vs baseline [95%]"] if intervals is not None else []
    on_select = any(r.select_metrics for r in sweep.rows)
    extra += ["select AP"] if on_select else []
    columns = ["NMS IoU", "class-agnostic", "score threshold", "top-k", "AP", "AP50", "AP_small", "AP_medium", "AP_large", *extra,
               "detections / image", "NMS ms", "end-to-end ms"]
    rows = [[r.nms_iou, r.class_agnostic, r.score_threshold, r.top_k] + [ap_or_none(r.metrics.get(k)) for k in
                                                       ("AP", "AP50", *SIZE_METRICS)]
            + ([intervals[i]] if intervals is not None else [])
            + ([ap_or_none((r.select_metrics or {}).get("AP"))] if on_select else [])
            + [r.detections_per_image, r.nms_ms, r.latency_ms] for i, r in enumerate(sweep.rows)]
    measured = sweep.forward_source or f"{sweep.runs} batch-1 runs, {sweep.threads} thread(s), {sweep.device}"
    note = (f"{Path(sweep.model).name} on {sweep.images} val images. End-to-end = model forward median "
            f"({sweep.rows[0].forward_ms:.2f} ms, {measured}) "
            f"+ median post-processing time (score threshold, per-class NMS, top-k) on the real predictions. "
            f"Class-agnostic: one NMS over each anchor's best class (TF Lite's default \"fast NMS\") instead of "
            f"one per class."
            if sweep.rows else "")
    if on_select:
        note += " AP columns: on val (reported only); \"select AP\": on the held-out selection split, where the setting is chosen."
    return Table(title, columns, rows, note=note,
                 formats={"NMS IoU": ".2f", "score threshold": ".3g", "detections / image": ".1f", "NMS ms": ".3f",
                          "end-to-end ms": ".2f"})
