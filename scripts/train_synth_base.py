"""Train and package the float base detector shipped with lpdet (`lpdet/weights/synth_base/`), the
model `lpdet design --data synth` starts from. The recorded, reproducible command:

    python scripts/train_synth_base.py --out runs/synth-base

1. The embedded synthetic dataset at its default size (4000 train / 500 val, seed 0).
2. Its selection split carved from train exactly as the design carves it (10%, seed 0;
   `lpdet.data.selection`): the base never sees the images the design makes its choices on, nor
   val, which is only reported.
3. `lpdet train` with RECIPE (MobileNetV2-SSDLite, width 0.5, 300x300, light augmentation, SGD +
   cosine), then MULTI_SCALE_RECIPE from its last weights (each step at a size in [160, 320]),
   timed; the second run's last checkpoint is the base (no epoch is picked on val). An interrupted
   run continues where it stopped when the command is run again.
4. The last checkpoint's weights stored in fp16 as an lpdet checkpoint directory, evaluated on the
   embedded val with `lpdet eval` (those fp16 weights, fp32 arithmetic), and `provenance.json`
   written beside it: recipe, data, training time, machine, AP / AP_S/M/L.

Same machine, seed and thread count: the same weights bit for bit (the training loop is
deterministic; bf16 autocast where the CPU has it, as `--precision auto` picks, so another CPU
family trains a slightly different model).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from lpdet.cli import main as lpdet
from lpdet.data.selection import with_selection_split
from lpdet.data.spec import SYNTH_DEFAULT_TRAIN, SYNTH_DEFAULT_VAL, resolve_dataset
from lpdet.deploy.latency import cpu_name
from lpdet.models.checkpoint_format import WEIGHTS, load_checkpoint, save_checkpoint
from lpdet.models.registry import build_detector
from lpdet.models.shipped import PROVENANCE, SYNTH_BASE

RECIPE = ["--arch", "mobilenet_v2_ssdlite", "--width", "0.5", "--resolution", "300", "--epochs", "8",
          "--batch-size", "16", "--lr", "0.03", "--warmup-steps", "100", "--augment", "light",
          "--max-val-images", "200", "--seed", "0", "--threads", "2", "--checkpoint-every", "200"]
# Stage 2 continues stage 1's last weights with every step at a size drawn from the multiples of 8 in
# [160, 320] (`--multi-scale`), so the base keeps its AP across the resolutions the design tries
# (stage 1 alone lost a third of its AP at 288 without fine-tuning). In fp32: under bf16 autocast
# oneDNN's depthwise backward gave non-finite gradients on a quarter of the steps at sizes <= 240.
MULTI_SCALE_RECIPE = ["--arch", "mobilenet_v2_ssdlite", "--width", "0.5", "--resolution", "300", "--epochs", "5",
                      "--batch-size", "16", "--lr", "0.005", "--warmup-steps", "50", "--augment", "light",
                      "--multi-scale", "160", "320", "--anchor-grid", "stride",
                      "--anchor-reference", "300", "--max-val-images", "200", "--seed", "1", "--threads", "2",
                      "--precision", "fp32",
                      "--checkpoint-every", "200"]
STAGES = (("train", RECIPE), ("multiscale", MULTI_SCALE_RECIPE))  # (run folder under --out, recipe)
SELECT_FRACTION, SELECT_SEED = 0.1, 0


def train_base(out: Path) -> tuple[Path, float]:
    """Steps 1-3; returns the last stage's last checkpoint and the training time (all stages, summed
    over resumes)."""
    carved = with_selection_split(resolve_dataset("synth"), out / "data", fraction=SELECT_FRACTION, seed=SELECT_SEED)
    timing = out / "timing.json"
    seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else {}
    if not isinstance(seconds, dict):  # written when the recipe had one stage
        seconds = {STAGES[0][0]: seconds}
    init: list[str] = []
    for name, recipe in STAGES:
        run = out / name
        resume = ["--resume", str(run)] if (run / "last").exists() else []
        epochs = int(recipe[recipe.index("--epochs") + 1])
        if not resume or load_checkpoint(run / "last").train_state.get("epoch", 0) < epochs:
            start = time.perf_counter()
            fresh = ["--data", str(carved.root / "data.yaml"), *recipe, *init, "--out", str(run)]
            status = lpdet(["train", *(resume or fresh)])
            if status:
                raise SystemExit(f"training stopped (exit {status}); run the same command again to continue")
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            timing.write_text(json.dumps({"seconds": seconds}))
        init = ["--init", str(run / "last")]
    return out / STAGES[-1][0] / "last", sum(seconds.values())


def package(last: Path, target: Path) -> None:
    """Step 4a: the checkpoint's weights in fp16, as an ordinary lpdet checkpoint directory."""
    ckpt = load_checkpoint(last)
    detector = build_detector(ckpt.model_config)
    detector.load_state_dict(ckpt.model_state)
    save_checkpoint(target, model=detector.half(), model_config=ckpt.model_config, class_names=ckpt.class_names,
                    category_ids=ckpt.category_ids)


def evaluate_on_val(checkpoint: Path) -> dict:
    """Step 4b: `lpdet eval` of the packaged weights on the embedded val (all 500 images)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = lpdet(["eval", str(checkpoint), "--data", "synth", "--json", "--quiet",
                        "--results", str(checkpoint.parent / "synth_base-val-results.json")])
    if status:
        raise SystemExit(f"lpdet eval failed (exit {status})")
    return json.loads(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/synth-base"))
    parser.add_argument("--target", type=Path, default=SYNTH_BASE, help="where the packaged base goes")
    args = parser.parse_args()
    last, seconds = train_base(args.out)
    if args.target.exists():
        shutil.rmtree(args.target)
    package(last, args.target)
    report = evaluate_on_val(args.target)
    os.replace(args.target.parent / "synth_base-val-results.json", args.out / "synth_base-val-results.json")
    metrics = {k: report[k] for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")}
    provenance = {
        "command": "python scripts/train_synth_base.py --out runs/synth-base",
        "recipe": RECIPE,
        "multi_scale_recipe": MULTI_SCALE_RECIPE,
        "data": {"dataset": "synth", "train_images": SYNTH_DEFAULT_TRAIN, "val_images": SYNTH_DEFAULT_VAL,
                 "seed": 0, "select_fraction": SELECT_FRACTION, "select_seed": SELECT_SEED},
        "weights": {"dtype": "float16", "checkpoint": "last",
                    "sha256": hashlib.sha256((args.target / WEIGHTS).read_bytes()).hexdigest()},
        "training_seconds": round(seconds, 1),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "system": f"{platform.system()} {platform.machine()}",
                    "torch": torch.__version__, "python": platform.python_version()},
        "val_images": report["images"],
        "val_metrics": metrics,
        "date": datetime.date.today().isoformat(),
    }
    (args.target / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"shipped base: {args.target}; training {seconds / 60:.1f} min; val AP {metrics['AP']:.4f} "
          f"(AP_S {metrics['AP_small']:.4f}, AP_M {metrics['AP_medium']:.4f}, AP_L {metrics['AP_large']:.4f})")


if __name__ == "__main__":
    main()
