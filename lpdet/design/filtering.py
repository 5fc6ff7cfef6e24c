"""The dataset-filtering experiment (Figs 11.3 / 11.4 of the seed): the same training with and
without the training images that hold small objects; AP_small / AP_medium / AP_large over
training steps. Its experiment (`filtering_ablation`), table and figures. The training curves
come from each run's ``val.csv`` (the torch model evaluated after every epoch).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lpdet.data.filtering import filter_dataset
from lpdet.data.sizes import SizeThresholds, read_coco_json
from lpdet.data.spec import resolve_dataset
from lpdet.design.report import Figure, Table, line_plot
from lpdet.design.settings import FRESH_ANCHOR_GRID, train_config
from lpdet.design.tables import SIZE_METRICS, ap_or_none, write_sweep_files
from lpdet.design.trials import TrialCache, data_identity, dataset_yaml, read_val_csv
from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.models.config import is_qat, kept_anchors
from lpdet.train.config import TrainConfig


class FilterTooSmall(LpdetError):
    """The filtered training split keeps too few images to train with the chosen batch size."""


@dataclass
class FilterRun:
    """One arm of the ablation: a training run and its per-epoch validation."""

    name: str  # the training trial
    checkpoint: str  # its best checkpoint
    train_images: int
    epochs: int
    steps: int
    val: list[dict]  # RUN/val.csv rows
    best: dict  # the best epoch's row


@dataclass
class FilterAblation:
    runs: dict[str, FilterRun]  # "all" / "filtered"
    filter_report: dict
    drop_images_with: list[str]
    resolution: int
    epochs: int
    qat: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _train_images(data: Path) -> int:
    spec = resolve_dataset(str(data))
    return len(read_coco_json(spec.train.annotations)["images"]) if spec.train else 0


def matching_epochs(epochs: int, images: int, kept: int, batch_size: int, limit_train_batches: int = 0) -> int:
    """Epochs on the `kept` filtered images that make about as many steps as `epochs` on all `images`
    (an epoch is at most `limit_train_batches` steps when that is set, whatever the set's size)."""
    def steps_per_epoch(n: int) -> int:
        full = n // batch_size
        return min(full, limit_train_batches) if limit_train_batches else full

    return max(epochs, round(epochs * steps_per_epoch(images) / max(1, steps_per_epoch(kept))))


def filtering_ablation(init: Path | str | None, data: str | Path, out_dir: Path | str, *, epochs: int = 1,
                       resolution: int | None = None, arch: str = "mobilenet_v2_ssdlite", width: float | None = None,
                       qat: bool | None = None, batch_size: int = 32, drop_images_with: Sequence[str] = ("small",),
                       small_max: float = 32.0, large_min: float = 96.0, train_overrides: dict | None = None,
                       names: tuple[str, str] = ("filter-all", "filter-no-small"), cache: TrialCache | None = None,
                       progress: bool = True, write: bool = True) -> FilterAblation:
    """Train twice with the same settings and about the same number of steps (`epochs` on all
    training images; as many epochs as that takes on those left after `filter_dataset(...,
    drop_images_with=drop_images_with)`); returns both runs' val.csv curves.

    With `init` (a checkpoint), both runs start from it (arch, width, resolution and QAT taken
    from it unless given); without, both train from scratch (`arch`, `width` default 1.0,
    `resolution` default 300, float). Trials: ``filter-data`` (the filtered dataset) and the two
    training runs named by `names`. Writes ``out_dir/filter_ablation.{md,json}`` + PNGs (with `write`).
    Raises `FilterTooSmall` if the filtered split has fewer images than `batch_size`."""

    if epochs < 1:
        raise LpdetError(f"--epochs {epochs}: must be >= 1")
    out_dir = Path(out_dir)
    cache = cache or TrialCache(out_dir / "trials", progress=progress)
    data_path = dataset_yaml(data)
    anchors = {"anchor_grid": FRESH_ANCHOR_GRID, "anchor_reference": None}  # from scratch: as the flow's own base
    if init is not None:
        ckpt = load_checkpoint(init)
        anchors = kept_anchors(ckpt.model_config)
        arch = ckpt.model_config.arch
        width = ckpt.model_config.width if width is None else width
        resolution = ckpt.model_config.resolution if resolution is None else resolution
        qat = is_qat(ckpt.model_config) if qat is None else qat
        init = ckpt.path
    width = 1.0 if width is None else width
    resolution = 300 if resolution is None else resolution
    qat = bool(qat)
    thresholds = SizeThresholds(small=small_max ** 2, large=large_min ** 2)
    cache.plan(3)

    def make_filtered(directory: Path) -> dict:
        yaml_path = filter_dataset(resolve_dataset(str(data_path)), directory / "data", drop_images_with=drop_images_with,
                                   thresholds=thresholds, split="train")

        report = json.loads((directory / "data" / "filter_report.json").read_text())
        return {"files": {"yaml": str(yaml_path.relative_to(directory))}, "report": report}

    filtered = cache.run("filter-data", {"data": data_identity(data_path), "drop": list(drop_images_with),
                                         "thresholds": [thresholds.small, thresholds.large]}, make_filtered, kind="filter")
    filtered_yaml = cache.file(filtered, "yaml")
    kept = filtered["report"]["after"]["images"]
    if kept < max(2, batch_size):
        raise FilterTooSmall(f"dropping training images with {'/'.join(drop_images_with)} objects leaves {kept} of "
                             f"{filtered['report']['before']['images']} images, fewer than the batch size {batch_size}; "
                             f"use more data or a smaller batch size")

    def config(path: Path, run_epochs: int) -> TrainConfig:
        return train_config(path, arch=arch, width=width, resolution=resolution, **anchors, epochs=run_epochs,
                            batch_size=batch_size, init=init, qat=qat, **(train_overrides or {}))

    # The same number of training steps for both runs (as the paper's plots over steps compare
    # them): the smaller filtered set is gone through more times. With equal epochs it would see
    # fewer updates, and the comparison would measure that instead of the filtering.
    filtered_epochs = matching_epochs(epochs, filtered["report"]["before"]["images"], kept, batch_size,
                                      (train_overrides or {}).get("limit_train_batches", 0))
    runs = {}
    for key, name, path, run_epochs in (("all", names[0], data_path, epochs),
                                        ("filtered", names[1], filtered_yaml, filtered_epochs)):
        trained = cache.train(name, config(path, run_epochs))
        runs[key] = FilterRun(name=name, checkpoint=str(cache.file(trained, "best")), train_images=_train_images(path),
                              epochs=run_epochs, steps=trained["steps"], val=trained["val"], best=trained["best"])
    ablation = FilterAblation(runs=runs, filter_report=filtered["report"], drop_images_with=list(drop_images_with),
                              resolution=resolution, epochs=epochs, qat=qat)
    if write:
        write_sweep_files(out_dir, "filter_ablation", "Dataset filtering ablation", [filter_table(ablation)],
                          filter_figures(ablation), ablation.to_dict())
    return ablation


def filter_table(ablation: FilterAblation, *, title: str = "Training with and without images holding small objects",
                 deployed: dict[str, dict] | None = None, interval: str | None = None) -> Table:
    """Per run: training images, steps, and the val AP of its last epoch (val.csv); `deployed`
    (run key -> metrics of the int8 export) adds the deployed AP, and `interval` the filtered run's
    deployed AP minus the unfiltered one's, with an interval."""
    columns = ["training data", "train images", "steps", "AP (last epoch)", "AP_small", "AP_medium", "AP_large"]
    if deployed:
        columns.append("AP (int8, deployed)")
    if interval is not None:
        columns.append("Δ AP vs all images [95%]")
    rows = []
    labels = {"all": "all images", "filtered": f"without images with {'/'.join(ablation.drop_images_with)} objects"}
    for key in ("all", "filtered"):
        run = ablation.runs.get(key)
        if not run:
            continue
        last = run.val[-1] if run.val else {}
        cells = [labels[key], run.train_images, run.steps] + [ap_or_none(last.get(k)) for k in ("AP", *SIZE_METRICS)]
        if deployed:
            cells.append(ap_or_none((deployed.get(key) or {}).get("AP")))
        if interval is not None:
            cells.append(interval if key == "filtered" else None)
        rows.append(cells)
    report = ablation.filter_report
    note = (f"Filter: removed {report.get('removed_images')} of {report.get('before', {}).get('images')} training images "
            f"({report.get('removed_annotations')} annotations); small: area < "
            f"{(report.get('thresholds') or {}).get('small', 0):g} pixels². Same settings and about the same "
            f"number of steps for both runs (at {ablation.resolution}{', QAT' if ablation.qat else ''}; the smaller "
            f"filtered set for more epochs: {_epochs(ablation, 'filtered')} vs "
            f"{_epochs(ablation, 'all')}); AP from each run's val.csv (the torch "
            f"model after its last epoch).")
    return Table(title, columns, rows, note=note)


def _epochs(ablation: FilterAblation, key: str) -> int:
    run = ablation.runs.get(key)
    return run.epochs if run else ablation.epochs


def filter_figures(ablation: FilterAblation) -> list[Figure]:
    """Figs 11.3 / 11.4: AP_small / AP_medium / AP_large over training steps, one figure per run."""
    figures = []
    titles = {"all": "AP by object size during training: all training images",
              "filtered": f"AP by object size during training: without images with "
                          f"{'/'.join(ablation.drop_images_with)} objects"}
    for key in ("all", "filtered"):
        run = ablation.runs.get(key)
        if not run:
            continue
        val = run.val or read_val_csv(Path(run.checkpoint).parent / "val.csv")
        steps = [int(r["step"]) for r in val]
        series = {name: (steps, [ap_or_none(r.get(name)) for r in val]) for name in SIZE_METRICS}
        figures.append(line_plot(titles[key], "training step", "COCO AP (val)", series,
                                 caption=f"{run.train_images} training images, {run.steps} step(s); one point per "
                                         f"epoch (val.csv of {run.name})."))
    return figures
