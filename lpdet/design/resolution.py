"""The resolution experiment (Table 11.2 / Fig 11.2 of the seed): per input resolution, AP (int8, as
deployed) and int8 latency of the checkpoint simply loaded at that resolution, and of a model
fine-tuned (QAT) at it; flags the resolutions whose feature maps are not multiples of 8. Its
experiment (`resolution_sweep`, cached trials), table and figure.

Every AP is COCO AP from pycocotools on the dataset's val split, computed on the deployed
model (`load_model(...).predict`); every latency is the median of `lpdet.deploy.latency.benchmark`
at batch 1 on this machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpdet.deploy.latency import cpu_name
from lpdet.design.report import Figure, Table, line_plot
from lpdet.design.settings import train_config
from lpdet.design.tables import SIZE_METRICS, ap_or_none, write_sweep_files
from lpdet.design.trials import TrialCache, measure_int8, dataset_yaml
from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.models.config import ModelConfig, check_resolution, is_qat, kept_anchors
from lpdet.models.profile import ALIGNMENT, misalignment_reasons, profile_model


@dataclass
class ResolutionRow:
    resolution: int
    multiple_of_8: bool  # the input size itself
    feature_maps: str  # "19x19 10x10 5x5 3x3 2x2 1x1"
    misaligned_maps: list[str]  # SSD maps >= 8 whose size is not a multiple of 8, e.g. "backbone_s16 19x19"
    misaligned_layers: int  # conv layers whose output height/width (>= 8) is not a multiple of 8
    macs: int
    metrics: dict[str, float] = field(default_factory=dict)  # without fine-tuning (int8 as deployed)
    latency_ms: float | None = None  # int8 median, batch 1
    latency_p90_ms: float | None = None
    size_mb: float | None = None
    quantization: str = ""
    onnx: str = ""
    ft_metrics: dict[str, float] | None = None  # fine-tuned at this resolution
    ft_latency_ms: float | None = None
    ft_onnx: str | None = None
    ft_checkpoint: str | None = None
    ft_steps: int | None = None
    predictions: str | None = None  # predictions files of the two evaluations (`lpdet.design.noise`)
    ft_predictions: str | None = None
    select_metrics: dict[str, float] | None = None  # the same two on the selection split (the design chooses on it)
    ft_select_metrics: dict[str, float] | None = None
    meets_budget: bool | None = None  # latency_ms <= budget (None without a budget)

    @property
    def aligned(self) -> bool:
        """Input and every SSD feature map of 8 or more a multiple of 8 (what phone kernels like)."""
        return self.multiple_of_8 and not self.misaligned_maps

    @property
    def flag(self) -> str:
        if self.aligned:
            return "ok"
        reasons = [] if self.multiple_of_8 else [f"input {self.resolution} not a multiple of 8"]
        reasons += [f"{m} not a multiple of 8" for m in self.misaligned_maps]
        return "; ".join(reasons)

    def to_dict(self) -> dict:
        return {**asdict(self), "aligned": self.aligned, "flag": self.flag}


@dataclass
class ResolutionSweep:
    rows: list[ResolutionRow]  # by decreasing resolution
    init: str
    data: str
    threads: int
    runs: int
    epochs: int
    qat: bool
    budget_ms: float | None = None
    device: str = ""
    repeats: int = 1
    fit_limit_ms: float | None = None  # what a row may measure to fit (the budget less a reserve); None: the budget
    latency_note: str = ""  # how `latency` given to `resolution_sweep` was measured (else: its own benchmarks)

    def row(self, resolution: int) -> ResolutionRow | None:
        return next((r for r in self.rows if r.resolution == resolution), None)

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "rows"}
        data["rows"] = [r.to_dict() for r in self.rows]
        return data


def resolution_geometry(arch: str, width: float, num_classes: int, resolution: int) -> dict:
    """Feature-map sizes and multiple-of-8 geometry of the model at `resolution` (`profile_model`)."""

    profile = profile_model(ModelConfig(arch=arch, num_classes=num_classes, width=width, resolution=resolution))
    maps = profile.feature_maps
    spatial = [g for g in profile.misaligned if any("output height" in r or "output width" in r for r in g.reasons)]
    return {
        "multiple_of_8": resolution % ALIGNMENT == 0,
        "feature_maps": " ".join(f"{m.height}x{m.width}" for m in maps),
        "misaligned_maps": [f"{m.name} {m.height}x{m.width}" for m in maps
                            if misalignment_reasons(ALIGNMENT, m.height, m.width)],
        "misaligned_layers": len(spatial),
        "macs": int(profile.macs),
    }


def resolution_sweep(init_ckpt: Path | str, data: str | Path, resolutions: Iterable[int], out_dir: Path | str, *,
                     epochs: int = 1, qat: bool = True, finetune: bool | Iterable[int] = True, batch_size: int = 32,
                     threads: int = 1, runs: int = 30, warmup: int = 5, repeats: int = 3, max_images: int = 0,
                     calibration_images: int = 100, budget_ms: float | None = None,
                     train_overrides: dict | None = None, cache: TrialCache | None = None, progress: bool = True,
                     write: bool = True, train_data: str | Path | None = None, select: bool = False,
                     latency: dict[int, dict] | None = None, fit_limit_ms: float | None = None) -> ResolutionSweep:
    """AP and int8 latency per resolution, without and with fine-tuning (see the module docstring).

    For each R: the checkpoint loaded at R (anchors recomputed; weights as they are) is exported
    int8 (a QAT checkpoint directly; a float one with calibrated PTQ), evaluated on val and
    benchmarked; with `finetune` (True: every R; or the resolutions to fine-tune) a model is
    trained from `init_ckpt` at R for `epochs` (QAT if `qat`; `train_overrides`: other TrainConfig
    fields; on `train_data`, default `data`) and measured the same way; with `select`, every model is also
    evaluated on `data`'s selection split. `latency` (resolution -> `latency_to_dict` of the graph, measured
    elsewhere, e.g. interleaved with the others) replaces the benchmarks (a fine-tuned model has the same
    graph). `budget_ms` marks rows whose int8 latency fits (at most `fit_limit_ms` when given: the budget
    less the reserve a caller keeps for re-benchmarks). Writes
    ``out_dir/resolution_sweep.{md,json,png}`` (with `write`). Trials live in ``out_dir/trials``
    (or `cache`)."""

    resolutions = _check_resolutions(resolutions)
    if epochs < 1:
        raise LpdetError(f"--epochs {epochs}: must be >= 1")
    if budget_ms is not None and not budget_ms > 0:
        raise LpdetError(f"--budget-ms {budget_ms}: must be > 0")
    out_dir = Path(out_dir)
    cache = cache or TrialCache(out_dir / "trials", progress=progress)
    ckpt = load_checkpoint(init_ckpt)
    model_cfg = ckpt.model_config
    data_path = dataset_yaml(data)
    train_path = dataset_yaml(train_data) if train_data is not None else data_path
    to_tune = set(resolutions) if finetune is True else set() if finetune is False else set(int(r) for r in finetune)
    int8 = qat or is_qat(ckpt.model_config)
    cache.plan(3 * len(resolutions) + 4 * len(to_tune & set(resolutions)))

    rows = []
    for r in sorted(resolutions, reverse=True):
        row = ResolutionRow(resolution=r, **resolution_geometry(model_cfg.arch, model_cfg.width,
                                                               len(ckpt.class_names), r))
        m = measure_int8(cache, f"noft-r{r}", ckpt.path, data_path, resolution=r, threads=threads, runs=runs,
                         warmup=warmup, max_images=max_images, calibration_images=calibration_images, int8=int8,
                         repeats=repeats, select=select, benchmark=latency is None)
        graph = latency[r] if latency is not None else m.latency
        row.metrics, row.latency_ms, row.latency_p90_ms = m.metrics, graph["median_ms"], graph["p90_ms"]
        row.select_metrics = m.select_metrics
        row.size_mb, row.quantization, row.onnx = m.size_mb, m.quantization, str(m.onnx)
        row.predictions = str(m.predictions)
        if budget_ms is not None:
            row.meets_budget = row.latency_ms <= (fit_limit_ms if fit_limit_ms is not None else budget_ms)
        if r in to_tune:
            cfg = train_config(train_path, arch=model_cfg.arch, width=model_cfg.width, resolution=r,
                               **kept_anchors(model_cfg), epochs=epochs,
                               batch_size=batch_size, init=ckpt.path, qat=qat,
                               **{"lr": 0.005, "warmup_steps": 20, **(train_overrides or {})})
            trained = cache.train(f"finetune-r{r}", cfg)
            best = cache.file(trained, "best")
            ft = measure_int8(cache, f"finetune-r{r}", best, data_path, resolution=None, threads=threads, runs=runs,
                              warmup=warmup, max_images=max_images, calibration_images=calibration_images,
                              int8=int8, repeats=repeats, select=select, benchmark=latency is None)
            row.ft_metrics, row.ft_select_metrics = ft.metrics, ft.select_metrics
            row.ft_latency_ms = graph["median_ms"] if latency is not None else ft.latency_ms
            row.ft_onnx, row.ft_checkpoint, row.ft_steps = str(ft.onnx), str(best), trained["steps"]
            row.ft_predictions = str(ft.predictions)
        rows.append(row)

    sweep = ResolutionSweep(rows=rows, init=str(ckpt.path), data=str(data), threads=threads, runs=runs, epochs=epochs,
                            qat=qat, budget_ms=budget_ms, device=cpu_name(), repeats=repeats, fit_limit_ms=fit_limit_ms,
                            latency_note="int8 latency: the design's interleaved measurement" if latency else "")
    if write:
        write_sweep_files(out_dir, "resolution_sweep", "Resolution sweep", [resolution_table(sweep)],
                          [resolution_figure(sweep)], sweep.to_dict(),
                          text=f"Initial checkpoint {sweep.init}; data {data}; int8 latency: median of {runs} "
                               f"batch-1 runs, {threads} thread(s), {sweep.device}.")
    return sweep


def _check_resolutions(resolutions: Iterable[int]) -> list[int]:
    values = []
    for r in resolutions:
        check_resolution(r, "--resolutions")
        if r not in values:
            values.append(r)
    if not values:
        raise LpdetError("--resolutions: give at least one resolution")
    return values


def resolution_table(sweep: ResolutionSweep, *, title: str = "AP and int8 latency vs input resolution",
                     reference: int | None = None) -> Table:
    """Table 11.2: one row per resolution; latency also as a % of the `reference` resolution's (default: the largest)."""
    ref = sweep.row(reference) if reference is not None else (sweep.rows[0] if sweep.rows else None)
    columns = ["resolution", "feature maps", "multiple of 8", "int8 latency ms", "% of ref latency"]
    if sweep.budget_ms is not None:
        columns.append("meets budget" if sweep.fit_limit_ms is None else f"fits (<= {sweep.fit_limit_ms:.3g} ms)")
    columns += ["AP (no fine-tuning)", "AP (fine-tuned)", "latency fine-tuned ms", "AP_small", "AP_medium", "AP_large"]
    chosen_on_select = any(r.select_metrics for r in sweep.rows)
    if chosen_on_select:
        columns += ["select AP (no fine-tuning)", "select AP (fine-tuned)"]
    rows = []
    for r in sweep.rows:
        pct = (100 * r.latency_ms / ref.latency_ms) if ref and ref.latency_ms and r.latency_ms is not None else None
        cells = [r.resolution, r.feature_maps, "yes" if r.aligned else f"no: {r.flag}", r.latency_ms, pct]
        if sweep.budget_ms is not None:
            cells.append(r.meets_budget)
        sizes = r.ft_metrics if r.ft_metrics else r.metrics
        cells += [ap_or_none(r.metrics.get("AP")), ap_or_none(r.ft_metrics.get("AP")) if r.ft_metrics else None,
                  r.ft_latency_ms]
        cells += [ap_or_none(sizes.get(k)) for k in SIZE_METRICS]
        if chosen_on_select:
            cells += [ap_or_none((m or {}).get("AP")) for m in (r.select_metrics, r.ft_select_metrics)]
        rows.append(cells)
    measured = (f"{sweep.latency_note} (the fine-tuned model has the same graph)" if sweep.latency_note else
                f"int8 latency: median of {sweep.runs} batch-1 runs with {sweep.threads} thread(s) on {sweep.device}"
                f"{f' (lowest of {sweep.repeats} repeats)' if sweep.repeats > 1 else ''}, of the checkpoint loaded at "
                f"each resolution and of the fine-tuned model (same graph, measured again)")
    note = (f"{measured}; % of the {ref.resolution if ref else '-'} row. Fine-tuning: {sweep.epochs} epoch(s) "
            f"{'QAT ' if sweep.qat else ''}from {sweep.init}. AP_small/medium/large: of the fine-tuned model where "
            f"there is one. 'multiple of 8': the input and every feature map of 8 or more.")
    if sweep.budget_ms is not None:
        note += f" Budget: {sweep.budget_ms:.3g} ms" + (
            "." if sweep.fit_limit_ms is None else f"; a row fits at <= {sweep.fit_limit_ms:.3g} ms (a reserve kept "
                                                  f"for the machine's drift when the final model is benchmarked again).")
    if chosen_on_select:
        note += (" AP columns: on val (reported only); \"select AP\": on the held-out selection split, where the "
                 "resolution is chosen.")
    return Table(title, columns, rows, note=note, formats={"int8 latency ms": ".2f", "% of ref latency": ".0f",
                                                           "latency fine-tuned ms": ".2f"})


def resolution_figure(sweep: ResolutionSweep, *, title: str = "AP and int8 latency vs input resolution") -> Figure:
    """Fig 11.2: AP without / with fine-tuning (left axis) and int8 latency (right axis) vs resolution."""
    rows = sorted(sweep.rows, key=lambda r: r.resolution)
    xs = [r.resolution for r in rows]
    series = {"AP, no fine-tuning": (xs, [ap_or_none(r.metrics.get("AP")) for r in rows])}
    tuned = [r for r in rows if r.ft_metrics]
    if tuned:
        series["AP, fine-tuned"] = ([r.resolution for r in tuned], [ap_or_none(r.ft_metrics.get("AP")) for r in tuned])
    secondary = {"int8 latency": (xs, [r.latency_ms for r in rows])}
    levels = {f"budget ({sweep.budget_ms:g} ms)": sweep.budget_ms} if sweep.budget_ms is not None else None
    caption = f"Solid: AP (left axis); dashed: int8 latency on {sweep.threads} thread(s) (right axis)"
    caption += "; dotted: the latency budget." if levels else "."
    if tuned:
        caption += " Large dots: AP after fine-tuning at that resolution (only some resolutions are fine-tuned)."
    return line_plot(title, "input resolution", "COCO AP (val)", series, secondary=secondary,
                     secondary_label="int8 latency, ms (median, batch 1)", caption=caption,
                     points=frozenset({"AP, fine-tuned"}), secondary_levels=levels)
