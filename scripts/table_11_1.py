"""Table 11.1's figures on a fresh machine: every row trained here, compared, and combined. The recorded,
resumable command (about 24 minutes on 2 idle cores with the defaults, estimated below):

    python scripts/table_11_1.py --out runs/table-11-1

1. For each row of ROWS (the plain-conv classifier; the MobileNetV1 and MobileNetV2 classifiers and
   MobileNetV1-SSD, each standard and quantization-friendly): `lpdet classify train` (on `--cls-data`,
   default the embedded `synth-cls`) or `lpdet train` (on `--det-data`, default `synth`) from scratch for
   `--float-steps` steps, then QAT from its last weights (`--qat --init`) for `--qat-steps` steps. The
   `last` checkpoints are compared (no epoch is picked on val, which is only reported).
2. `lpdet classify compare-quant` over the five classifiers and `lpdet compare-quant` for each detector:
   float, naive 8-bit, calibrated PTQ and QAT, accuracy, latency, folded weight-range spread.
3. `lpdet table-11-1` over those results: `OUT/table/table_11_1.md` and `.json`.

How long: per-step CPU time measured on this code (1 thread, fp32, Intel Xeon, shared machine) is 3.6 s for
one float step of all seven rows and 6.7 s for one QAT step; a tiny run of the script (3 + 2 steps per
model) spent 340 CPU seconds outside those steps (runs' set-up, validation, exports, comparisons on 10
images). With 20% for data loading and loss, 1.6x from the second core, about 2 min of comparisons on
every val image and 1 min of data generation, the defaults come to about 24 minutes on 2 idle cores
(an estimate: the full run has not been timed). `--float-steps` / `--qat-steps` scale the training part.

Each stage's time is recorded in `OUT/timing.json`, and the arguments in `OUT/recipe.json`. Run the same
command again after an interruption: a finished training or comparison is kept, an unfinished training
resumes from its `last` checkpoint.

`--collapse-recipe` trains every float classifier the way that spreads folded depthwise ranges (item 4 of
issue 14): a high learning rate kills pointwise ReLU6 channels, the depthwise BatchNorm of a dead channel
sees a variance near zero and folds ``gamma / sqrt(var + eps)`` (about 300x) into weights that no
weight decay shrinks (`--depthwise-weight-decay 0`). The quantization-friendly variant has no BatchNorm
there to fold. Trained at lr 1.0 throughout, a classifier barely learns its task, so the accuracy drop
cannot be read; `--collapse-steps N` keeps lr 1.0 for a first run of N steps only and trains on from it at
the usual rate (a dead ReLU6 channel gets no gradient, so it stays dead and its range stays spread).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from lpdet.cli import main as lpdet
from lpdet.data.classification import SYNTH_CLS_TRAIN
from lpdet.data.spec import SYNTH_DEFAULT_TRAIN
from lpdet.models.checkpoint_format import load_checkpoint


@dataclass(frozen=True)
class Row:
    name: str  # run folder under OUT
    arch: str
    quant_friendly: bool = False

    @property
    def detector(self) -> bool:
        return not self.arch.endswith("_classifier")


ROWS = (
    Row("plain_conv", "plain_conv_classifier"),
    Row("mnv1_cls", "mobilenet_v1_classifier"), Row("mnv1_cls_qf", "mobilenet_v1_classifier", True),
    Row("mnv2_cls", "mobilenet_v2_classifier"), Row("mnv2_cls_qf", "mobilenet_v2_classifier", True),
    Row("mnv1_ssd", "mobilenet_v1_ssd"), Row("mnv1_ssd_qf", "mobilenet_v1_ssd", True),
)
# What every run shares; fp32 because bf16 autocast made oneDNN's depthwise backward non-finite at small sizes.
COMMON = ["--width", "0.5", "--augment", "light", "--seed", "0", "--threads", "2", "--precision", "fp32",
          "--max-val-images", "200", "--checkpoint-every", "100"]
CLASSIFIER = ["--resolution", "96", "--batch-size", "32", "--lr", "0.05"]
DETECTOR = ["--resolution", "160", "--batch-size", "16", "--lr", "0.03"]
QAT = ["--qat", "--lr", "0.005"]
# Item 4: what spreads the standard MobileNet's folded depthwise ranges (see the module docstring).
# Probe (MobileNetV1 w0.25 @64, 100 steps, lr 1.0): folded depthwise spread median 239, worst 1675, with dead
# depthwise-BN channels in 9 of 13 blocks; the quant-friendly variant trained the same way: 3.0 / 4.9.
COLLAPSE = ["--lr", "1.0", "--depthwise-weight-decay", "0"]
# A ReLU6 channel that died at lr 1.0 gets no gradient again, so training on at the usual rate keeps its
# depthwise BatchNorm's variance near zero (the spread) while the rest of the network learns the task.
KEEP_COLLAPSED = ["--depthwise-weight-decay", "0"]


def schedule(steps: int, train_images: int, batch_size: int) -> list[str]:
    """`steps` optimizer steps as whole epochs of at most `--limit-train-batches` batches each."""
    per_epoch = math.ceil(train_images / batch_size)
    epochs = max(1, math.ceil(steps / per_epoch))
    return ["--epochs", str(epochs), "--limit-train-batches", str(math.ceil(steps / epochs)),
            "--warmup-steps", str(max(1, min(100, steps // 10)))]


def recipe(row: Row, args, stage: str) -> list[str]:
    """The `lpdet (classify) train` arguments of `row`'s "collapse", "float" or "qat" run (no --out, --init,
    --data). With --collapse-recipe, the classifiers' float training spreads the depthwise ranges: all of it
    at lr 1.0, or with --collapse-steps N, N steps at lr 1.0 (the "collapse" run) and then the usual rate."""
    base = DETECTOR if row.detector else CLASSIFIER
    batch = int(base[base.index("--batch-size") + 1])
    images = args.det_train_images if row.detector else args.cls_train_images
    steps = {"collapse": args.collapse_steps, "float": args.float_steps, "qat": args.qat_steps}[stage]
    out = ["--arch", row.arch, *COMMON, *base, *schedule(steps, images, batch)]
    out += ["--quant-friendly"] if row.quant_friendly else []
    if stage == "qat":
        out += QAT
    elif stage == "collapse" or (args.collapse_recipe and not row.detector and not args.collapse_steps):
        out += COLLAPSE  # every classifier, the plain-conv one too
    elif args.collapse_recipe and not row.detector:
        out += KEEP_COLLAPSED  # after the collapse run: the usual rate; dead channels stay dead
    return out  # a later option wins in argparse: QAT's and COLLAPSE's --lr replace the base's


def stages(row: Row, args) -> list[str]:
    """The training runs of `row`, in order, each initialised from the one before."""
    collapse = args.collapse_recipe and args.collapse_steps > 0 and not row.detector
    return [*(["collapse"] if collapse else []), "float", "qat"]


def _epochs(argv: list[str]) -> int:
    return int(argv[argv.index("--epochs") + 1])


class Timer:
    """Wall and CPU seconds per stage (CPU: this process and its finished children, all threads), summed over
    resumes, in OUT/timing.json. CPU seconds say what a stage costs on a shared machine, where wall time does not."""

    def __init__(self, out: Path):
        self.file = out / "timing.json"
        saved = json.loads(self.file.read_text()) if self.file.is_file() else {}
        self.seconds, self.cpu_seconds = saved.get("seconds", {}), saved.get("cpu_seconds", {})

    def run(self, name: str, argv: list[str]) -> None:
        start, cpu = time.perf_counter(), _cpu_seconds()
        status = lpdet(argv)
        if status:
            raise SystemExit(f"{name}: lpdet {' '.join(argv[:2])} stopped (exit {status}); run the same command "
                             f"again to continue")
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 1)
        self.cpu_seconds[name] = round(self.cpu_seconds.get(name, 0.0) + _cpu_seconds() - cpu, 1)
        self.file.write_text(json.dumps({"seconds": self.seconds, "cpu_seconds": self.cpu_seconds}, indent=2) + "\n")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def train_row(row: Row, args, timer: Timer) -> tuple[Path, Path]:
    """Step 1 for one row: its float run, then its QAT run; returns both `last` checkpoints."""
    command = ["train"] if row.detector else ["classify", "train"]
    data = args.det_data if row.detector else args.cls_data
    init: list[str] = []
    for stage in stages(row, args):
        run, argv = args.out / row.name / stage, recipe(row, args, stage)
        done = (run / "last").exists() and load_checkpoint(run / "last").train_state.get("epoch", 0) >= _epochs(argv)
        if not done:
            resume = (run / "last").exists()
            timer.run(f"{row.name}/{stage}", [*command, *(["--resume", str(run)] if resume else
                                                          ["--data", data, *argv, *init, "--out", str(run)]),
                                              *(["--quiet"] if args.quiet else [])])
        init = ["--init", str(run / "last")]
    return args.out / row.name / "float" / "last", args.out / row.name / "qat" / "last"


def compare(trained: dict[Row, tuple[Path, Path]], args, timer: Timer) -> list[Path]:
    """Step 2: one classifier comparison, one per detector; returns their folders (finished ones kept)."""
    fast = ["--runs", str(args.runs), "--max-images", str(args.max_images), *(["--quiet"] if args.quiet else [])]
    folders = []
    classifiers = [row for row in trained if not row.detector]
    if classifiers:
        folder = args.out / "compare" / "classifiers"
        if not (folder / "classify_compare.json").is_file():
            timer.run("compare/classifiers", [
                "classify", "compare-quant", *(str(trained[r][0]) for r in classifiers),
                "--qat", *(str(trained[r][1]) for r in classifiers), "--data", args.cls_data, *fast,
                "--out", str(folder)])
        folders.append(folder)
    for row in (r for r in trained if r.detector):
        folder = args.out / "compare" / row.name
        if not (folder / "quant_compare.json").is_file():
            timer.run(f"compare/{row.name}", ["compare-quant", str(trained[row][0]), "--qat", str(trained[row][1]),
                                              "--data", args.det_data, *fast, "--out", str(folder)])
        folders.append(folder)
    return folders


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/table-11-1"))
    parser.add_argument("--float-steps", type=int, default=250, help="float training steps per model (default 250)")
    parser.add_argument("--qat-steps", type=int, default=50, help="QAT steps per model (default 50)")
    parser.add_argument("--rows", nargs="+", choices=[r.name for r in ROWS], default=[r.name for r in ROWS],
                        help="which rows (default all)")
    parser.add_argument("--cls-data", default="synth-cls", help="classification data (default synth-cls)")
    parser.add_argument("--det-data", default="synth", help="detection data (default synth)")
    parser.add_argument("--cls-train-images", type=int, default=SYNTH_CLS_TRAIN,
                        help="train images of --cls-data (sets the epochs; default synth-cls's)")
    parser.add_argument("--det-train-images", type=int, default=SYNTH_DEFAULT_TRAIN,
                        help="train images of --det-data (default synth's)")
    parser.add_argument("--runs", type=int, default=30, help="paired latency runs per comparison (default 30)")
    parser.add_argument("--max-images", type=int, default=0, help="evaluate on the first N val images (0: all)")
    parser.add_argument("--collapse-recipe", action="store_true",
                        help="float MobileNet classifiers with a high lr and no depthwise weight decay (item 4)")
    parser.add_argument("--collapse-steps", type=int, default=0,
                        help="with --collapse-recipe: only the first N steps at lr 1.0, in a run of their own, then "
                             "--float-steps at the usual rate (default 0: the whole float run at lr 1.0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if min(args.float_steps, args.qat_steps) < 1 or args.collapse_steps < 0:
        parser.error("--float-steps and --qat-steps must be >= 1, --collapse-steps >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "recipe.json").write_text(json.dumps(
        {"args": recorded, "recipes": {r.name: {stage: recipe(r, args, stage) for stage in stages(r, args)}
                                       for r in ROWS if r.name in args.rows}}, indent=2) + "\n")
    timer = Timer(args.out)
    trained = {row: train_row(row, args, timer) for row in ROWS if row.name in args.rows}
    folders = compare(trained, args, timer)
    timer.run("table", ["table-11-1", *map(str, folders), "--out", str(args.out / "table")])
    print(f"Table 11.1: {args.out / 'table' / 'table_11_1.md'}; {sum(timer.seconds.values()) / 60:.1f} min in all "
          f"({args.out / 'timing.json'})")


if __name__ == "__main__":
    main()
