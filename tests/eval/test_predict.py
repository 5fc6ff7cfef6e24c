"""`lpdet predict`'s drawings: one per input, never over an input image or each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lpdet.eval.predict import output_paths, predict_images


def _image(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_names_do_not_collide_and_never_hit_an_input(tmp_path):
    paths = [tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "b" / "a.jpg", tmp_path / "a.jpg.pred.png"]
    targets = output_paths(paths, tmp_path)
    assert [t.name for t in targets] == ["a.jpg.2.pred.png", "a.png.pred.png",
                                         "a.jpg.3.pred.png", "a.jpg.pred.png.pred.png"]
    assert len(set(targets)) == len(targets) and not set(targets) & set(paths)


def test_predict_into_the_input_folder_keeps_every_input(tmp_path):
    inputs = [_image(tmp_path / "a.jpg", 0), _image(tmp_path / "a.png", 1)]
    before = {p: p.read_bytes() for p in inputs}

    def no_detections(batch):
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]

    summary = predict_images(no_detections, 32, ["thing"], inputs, tmp_path)
    assert {p: p.read_bytes() for p in inputs} == before
    outputs = [Path(s["output"]) for s in summary]
    assert sorted(p.name for p in outputs) == ["a.jpg.pred.png", "a.png.pred.png"]
    assert all(Image.open(p).size == (60, 40) for p in outputs)
