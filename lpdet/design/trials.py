"""A cache of design trials: each training run, export, evaluation or benchmark is a *trial*.

Layout (``DIR`` is a sweep's or design run's output folder)::

    DIR/trials/<name>/spec.json     what the trial measures (written when it starts)
    DIR/trials/<name>/result.json   its result (written atomically, only when it finished)
    DIR/trials/<name>/...           its files: run/ (training), model.onnx (export), ...

Asking for a trial whose ``result.json`` exists returns that result without redoing anything.
The *spec* (a JSON-able dict: the training config, the source checkpoint, the benchmark
settings, ...) is the cache key: a finished trial whose spec differs from the one asked for
(e.g. the epochs changed, or the checkpoint it exported was retrained) is redone. Files a spec
refers to are identified by their content (`file_identity`: SHA-256), not by path, so an
output folder can be moved without invalidating it, and a retrained checkpoint invalidates
everything measured from it.

An interrupted training trial (its ``run/last`` checkpoint exists, ``result.json`` does not)
continues exactly with ``train(cfg, resume=True)``. One log line per trial on the
``lpdet.design`` logger: ``[3/12] finetune-r240 … cached``.

Paths inside results are relative to the trial folder (``result["files"]``); `TrialCache.file`
makes them absolute.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lpdet.data.spec import load_dataset_yaml, resolve_dataset
from lpdet.data.splits import eval_split
from lpdet.deploy.export import export_onnx
from lpdet.deploy.int8 import export_int8
from lpdet.deploy.latency import benchmark, latency_to_dict
from lpdet.deploy.latency_inputs import bench_images
from lpdet.deploy.model import source_metadata
from lpdet.deploy.ptq import load_calibration_images
from lpdet.deploy.runtime import load_detector, load_model, model_size_bytes
from lpdet.design.noise import save_predictions
from lpdet.errors import LpdetError
from lpdet.eval.coco_eval import evaluate
from lpdet.models.checkpoint_format import META, WEIGHTS, resolve_checkpoint
from lpdet.models.config import is_qat
from lpdet.models.postprocess import PostprocessConfig
from lpdet.serialize import atomic_write_text, to_dict
from lpdet.train.config import TrainConfig
from lpdet.train.loop import train  # module attribute on purpose: tests replace it

__all__ = ["TrialCache", "Int8Measurement", "measure_int8", "file_identity", "data_identity", "read_val_csv", "dataset_yaml", "TRAIN_SPEC_IGNORED"]

log = logging.getLogger("lpdet.design")

RESULT = "result.json"
SPEC = "spec.json"
PREDICTIONS = "predictions.json"  # an eval trial's COCO results and image ids
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# TrainConfig fields that do not change what a run learns: not part of a training trial's key.
TRAIN_SPEC_IGNORED = ("out", "threads", "workers", "checkpoint_every")


# ----------------------------------------------------------------------------- identities
_HASHES: dict[tuple, str] = {}


def _sha256(path: Path, st) -> str:
    """Content hash of a file, memoised per (path, size, mtime) for this process."""

    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()[:32]
    return _HASHES[key]


def file_identity(path: Path | str | None) -> Any:
    """What identifies a file's (or a checkpoint/run directory's) content: its SHA-256, not its path
    or time, so a moved folder or a regenerated identical dataset keeps its trials valid."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        try:
            path = resolve_checkpoint(path)
        except LpdetError:
            return {"dir": path.name}
        files = [path / WEIGHTS, path / META]
    else:
        files = [path]
    ident = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            ident.append({"name": f.name, "missing": True})
            continue
        ident.append({"name": f.name, "sha256": _sha256(f, st)})
    return ident


def data_identity(data: str | Path) -> Any:
    """A dataset argument's identity: ``synth`` as is; a YAML by its content and its annotation files."""
    text = str(data)
    if text == "synth":
        return text
    path = Path(text)
    if path.is_dir():
        path = path / "data.yaml"
    try:
        spec = load_dataset_yaml(path)
    except LpdetError:
        return text
    identity = {"name": spec.name, "yaml": file_identity(path),
                "train": file_identity(spec.train.annotations) if spec.train else None,
                "val": file_identity(spec.val.annotations)}
    if spec.select is not None:
        identity["select"] = file_identity(spec.select.annotations)
    return identity


def dataset_yaml(data: str | Path, *, synth_train: int | None = None, synth_val: int | None = None,
                 synth_seed: int | None = None) -> Path:
    """The dataset YAML path for ``--data``: a YAML/folder as given, ``synth`` generated (cached)
    at the requested size. Training configs get this path, so a run always reads the same data."""

    spec = resolve_dataset(str(data), synth_train=synth_train, synth_val=synth_val, synth_seed=synth_seed)
    if str(data) != "synth":
        path = Path(str(data)).expanduser()
        return (path / "data.yaml" if path.is_dir() else path).resolve()
    root = Path(spec.root)
    found = [root / "data.yaml"] if (root / "data.yaml").is_file() else sorted(root.glob("*.y*ml"))
    if len(found) != 1:
        raise LpdetError(f"{root}: cannot tell which YAML describes the synthetic dataset; delete the folder and retry")
    return found[0].resolve()


def read_val_csv(path: Path) -> list[dict]:
    """RUN/val.csv rows with numbers as numbers (pycocotools' -1, no ground truth, kept as -1)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for key, value in row.items():
                try:
                    number = float(value)
                    parsed[key] = int(number) if key in ("epoch", "step") else number
                except (TypeError, ValueError):
                    parsed[key] = value
            rows.append(parsed)
    return rows


def _normalise(value: Any) -> Any:
    """Spec values as plain JSON (what json round-trips to), so stored and new specs compare equal."""
    return json.loads(json.dumps(to_dict(value), sort_keys=True, default=str))


# ----------------------------------------------------------------------------- the cache
class TrialCache:
    """Trials under ``root`` (``DIR/trials``); see the module docstring."""

    def __init__(self, root: Path | str, *, progress: bool = True, echo: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.progress = progress
        self.echo = echo
        self.count = 0  # trials asked for so far
        self.total = 0  # trials announced with `plan`
        self.ran: list[str] = []  # trials (re)done by this object, in order
        self.cached_names: list[str] = []

    # ------------------------------------------------------------------ bookkeeping
    def plan(self, n: int) -> None:
        """Announce `n` more trials (for the ``[i/N]`` counter)."""
        self.total += max(0, int(n))

    def path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"trial name {name!r}: use letters, digits, '.', '_' and '-'")
        return self.root / name

    def file(self, result: dict, key: str) -> Path:
        """Absolute path of the file `key` a finished trial recorded in ``result["files"]``."""
        return self.path(result["name"]) / result["files"][key]

    def cached(self, name: str) -> dict | None:
        """The recorded result of trial `name`, or None if it has not finished."""
        file = self.path(name) / RESULT
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _say(self, name: str, status: str) -> None:
        self.total = max(self.total, self.count)
        counter = f"[{self.count}/{self.total}]"
        line = f"{counter} {name} \u2026 {status}"
        log.info("%s", line)
        if self.echo is not None:
            self.echo(line)

    # ------------------------------------------------------------------ the one primitive
    def run(self, name: str, spec: dict, fn: Callable[[Path], dict], *, kind: str = "trial") -> dict:
        """Return trial `name`'s result: cached if finished with this `spec`, else ``fn(trial_dir)``
        (a dict, JSON-able; relative paths of its outputs under ``"files"``), recorded atomically."""
        self.count += 1
        directory = self.path(name)
        spec = _normalise({"kind": kind, **spec})
        result_file, spec_file = directory / RESULT, directory / SPEC
        if result_file.is_file():
            result = self.cached(name)
            if result is not None and result.get("spec") == spec:
                self._say(name, "cached")
                self.cached_names.append(name)
                return result
            self._say(name, "settings changed, redoing")
            shutil.rmtree(directory)
        elif directory.exists():
            try:
                old = json.loads(spec_file.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
            if old != spec:  # a different (or unknown) unfinished trial: start over
                shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(spec_file, json.dumps(spec, indent=2, sort_keys=True) + "\n")
        resuming = kind == "train" and _has_last(directory / "run")
        self._say(name, "resuming" if resuming else "running")
        start = time.perf_counter()
        payload = fn(directory)
        seconds = time.perf_counter() - start
        result = {"name": name, "kind": kind, "spec": spec, **_normalise(payload),
                  "seconds": round(seconds, 2), "finished": _dt.datetime.now().isoformat(timespec="seconds")}
        atomic_write_text(result_file, json.dumps(result, indent=2) + "\n")
        self.ran.append(name)
        self._say(name, f"done in {_duration(seconds)}")
        return result

    # ------------------------------------------------------------------ kinds of trial
    def train(self, name: str, cfg: TrainConfig, *, progress: bool | None = None) -> dict:
        """A training run in ``trials/<name>/run``; resumes an interrupted one. Result: ``files``
        (run, best, last), ``val`` (RUN/val.csv rows), ``best`` (the best epoch's row), ``steps``."""
        progress = self.progress if progress is None else progress
        config = {k: v for k, v in to_dict(cfg).items() if k not in TRAIN_SPEC_IGNORED}
        config["data"] = data_identity(cfg.data)
        config["init"] = file_identity(cfg.init)
        if cfg.backbone_weights:
            config["backbone_weights"] = file_identity(cfg.backbone_weights)

        def fn(directory: Path) -> dict:
            run = directory / "run"
            if _has_last(run):
                train(TrainConfig(out=run), resume=True, progress=progress)
            else:
                if run.exists():
                    shutil.rmtree(run)  # started but never checkpointed: nothing to keep
                train(replace(cfg, out=run), progress=progress)
            val = read_val_csv(run / "val.csv")
            best = max(val, key=lambda r: r.get("AP", -math.inf)) if val else {}
            return {"files": {"run": "run", "best": "run/best", "last": "run/last"}, "val": val, "best": best,
                    "steps": int(val[-1]["step"]) if val else 0, "epochs": cfg.epochs,
                    "resolution": cfg.model.resolution, "qat": cfg.is_qat}

        return self.run(name, {"config": config}, fn, kind="train")

    def export(self, name: str, checkpoint: Path, *, resolution: int | None = None, int8: bool = True,
               data: str | Path | None = None, calibration_images: int = 100) -> dict:
        """``model.onnx`` from a checkpoint at `resolution`: a QAT checkpoint gives the int8 QDQ graph; a
        float one gives fp32, or with `int8` calibrated PTQ on `calibration_images` train images of `data`."""

        def fn(directory: Path) -> dict:
            detector, ckpt = load_detector(checkpoint, resolution=resolution)
            out = directory / "model.onnx"
            qat = is_qat(detector.config)
            if not int8:
                export_onnx(detector, out, metadata=source_metadata(ckpt))
                quantization = "int8-qat" if qat else "fp32"
            else:
                if data is None and not qat:
                    raise LpdetError(f"{ckpt.path}: a float checkpoint needs calibration data for an int8 export")
                r = detector.config.resolution
                quantization = export_int8(detector, out, lambda: load_calibration_images(data, r, calibration_images),
                                           metadata=source_metadata(ckpt))
            return {"files": {"onnx": "model.onnx"}, "resolution": int(detector.config.resolution),
                    "quantization": quantization, "size_mb": model_size_bytes(out) / 1e6,
                    "arch": detector.config.arch, "width": detector.config.width}

        spec = {"checkpoint": file_identity(checkpoint), "resolution": resolution, "int8": int8,
                "calibration": [data_identity(data), calibration_images] if int8 and data is not None else None}
        return self.run(name, spec, fn, kind="export")

    def evaluate(self, name: str, model: Path, data: str | Path, *, postprocess=None, max_images: int = 0,
                 threads: int = 0, split: str = "val") -> dict:
        """COCO AP of `model` (checkpoint or .onnx, as deployed: `load_model(...).predict`) on `data`'s `split`;
        its predictions kept in ``files["predictions"]`` for paired bootstrap intervals (`lpdet.design.noise`)."""

        cfg = postprocess or PostprocessConfig()

        def fn(directory: Path) -> dict:
            deployed = load_model(model, threads=threads)
            dataset = eval_split(data, deployed.resolution, deployed.category_ids, split=split, where=str(deployed.path))
            result = evaluate(lambda images: deployed.predict(images, cfg), dataset, batch_size=8,
                              max_images=max_images, progress=False)
            save_predictions(directory / PREDICTIONS, result.results, result.image_ids)
            return {"files": {"predictions": PREDICTIONS}, "metrics": result.metrics, "images": result.num_images,
                    "kind": deployed.kind, "resolution": deployed.resolution, "postprocess": to_dict(cfg), "split": split}

        # "keeps": trials cached before predictions were kept are redone, so every AP has its predictions
        spec = {"model": file_identity(model), "data": data_identity(data), "postprocess": to_dict(cfg),
                "max_images": max_images, "split": split, "keeps": PREDICTIONS}
        return self.run(name, spec, fn, kind="eval")

    def benchmark(self, name: str, model: Path, *, threads: int = 1, runs: int = 50, warmup: int = 5,
                  postprocess=None, repeats: int = 1, data: str | Path | None = None) -> dict:
        """Batch-1 latency of `model` (`lpdet.deploy.latency.benchmark`) on val images of `data` (none:
        noise); result ``latency`` (its fields). With `repeats` > 1 the repeat with the lowest median
        is kept (timeit's rule); every repeat's median is recorded in ``medians_ms``."""
        cfg = postprocess or PostprocessConfig()  # the key holds the effective settings

        def fn(directory: Path) -> dict:
            images = bench_images(data=str(data)) if data is not None else None
            best = benchmark(model, threads=threads, runs=runs, warmup=warmup, postprocess=cfg, repeats=repeats,
                             images=images)
            return {"latency": latency_to_dict(best),
                    "medians_ms": [round(m, 4) for m in best.repeat_medians_ms or [best.median_ms]]}

        spec = {"model": file_identity(model), "threads": threads, "runs": runs, "warmup": warmup,
                "postprocess": to_dict(cfg), "repeats": repeats, "images": data_identity(data) if data else None}
        return self.run(name, spec, fn, kind="bench")


# ----------------------------------------------------------------------------- helpers
@dataclass
class Int8Measurement:
    """One deployed int8 model as `measure_int8` measured it."""

    onnx: Path  # the exported model
    size_mb: float
    quantization: str  # "int8-qat", "int8-ptq" (or "fp32" when exported without int8)
    metrics: dict[str, float] | None = None  # COCO AP, AP50, ... on val (None: not evaluated)
    predictions: Path | None = None  # the evaluation's predictions file (`lpdet.design.noise`)
    select_metrics: dict[str, float] | None = None  # the same on the selection split (None: not evaluated)
    latency: dict | None = None  # `latency_to_dict` of its benchmark (None: not benchmarked)

    @property
    def latency_ms(self) -> float | None:
        """Median batch-1 end-to-end latency."""
        return None if self.latency is None else self.latency["median_ms"]


def measure_int8(cache: TrialCache, prefix: str, checkpoint: Path, data: str | Path, *, resolution: int | None,
                 threads: int, runs: int, warmup: int, max_images: int = 0, calibration_images: int = 100,
                 evaluate: bool = True, benchmark: bool = True, int8: bool = True, repeats: int = 1,
                 select: bool = False) -> Int8Measurement:
    """Trials ``<prefix>-export`` (int8 ONNX at `resolution`), ``<prefix>-eval`` (COCO AP of that ONNX on
    val; with `select` also ``<prefix>-eval-select`` on the selection split) and ``<prefix>-bench`` (its
    latency), as one `Int8Measurement`."""
    export = cache.export(f"{prefix}-export", checkpoint, resolution=resolution, int8=int8, data=data,
                          calibration_images=calibration_images)
    onnx = cache.file(export, "onnx")
    measured = Int8Measurement(onnx=onnx, size_mb=export["size_mb"], quantization=export["quantization"])
    if evaluate:
        evaluated = cache.evaluate(f"{prefix}-eval", onnx, data, max_images=max_images)
        measured.metrics, measured.predictions = evaluated["metrics"], cache.file(evaluated, "predictions")
        if select:
            measured.select_metrics = cache.evaluate(f"{prefix}-eval-select", onnx, data, max_images=max_images,
                                                     split="select")["metrics"]
    if benchmark:
        measured.latency = cache.benchmark(f"{prefix}-bench", onnx, threads=threads, runs=runs, warmup=warmup,
                                           repeats=repeats)["latency"]
    return measured


def _has_last(run: Path) -> bool:
    return any((run / name / META).is_file() for name in ("last", "last.old"))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
