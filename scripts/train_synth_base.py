"""Train the float base detector that `lpdet design --data synth` starts from (issue: a trained
base ships with the embedded dataset). Recorded here so that anyone can regenerate it:

    python scripts/train_synth_base.py --out runs/synth-base

1. The embedded synthetic dataset at its default size (4000 train / 500 val, seed 0).
2. Its selection split carved from train (10%, seed 0; `lpdet.data.selection`): the base never
   sees the images the design makes its choices on, nor val, which is only reported.
3. `lpdet train` with the recipe below (MobileNetV2-SSDLite, width 0.5, 300x300, light
   augmentation, SGD + cosine), timed; the last checkpoint is the base (no epoch is picked on val).

Same machine, same seed and thread count: the same weights bit for bit (the training loop is
deterministic; bf16 autocast where the CPU has it, as `--precision auto` picks).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lpdet.cli import main as lpdet
from lpdet.data.selection import with_selection_split
from lpdet.data.spec import resolve_dataset

RECIPE = ["--arch", "mobilenet_v2_ssdlite", "--width", "0.5", "--resolution", "300", "--epochs", "16",
          "--batch-size", "16", "--lr", "0.03", "--warmup-steps", "100", "--augment", "light",
          "--max-val-images", "200", "--seed", "0", "--threads", "2", "--checkpoint-every", "200"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/synth-base"))
    args = parser.parse_args()
    carved = with_selection_split(resolve_dataset("synth"), args.out / "data", fraction=0.1, seed=0)
    data = carved.root / "data.yaml"
    run = args.out / "train"
    resume = ["--resume", str(run)] if (run / "last").exists() else []
    start = time.perf_counter()
    status = lpdet(["train", "--data", str(data), *RECIPE, "--out", str(run), *resume])
    seconds = time.perf_counter() - start
    (args.out / "timing.json").write_text(json.dumps({"seconds": seconds, "resumed": bool(resume)}))
    print(f"training took {seconds / 60:.1f} min (exit {status})")


if __name__ == "__main__":
    main()
