"""A user's dataset (every file hashed) is byte-for-byte the same after every command that reads it."""

import hashlib
from pathlib import Path

import pytest

from lpdet.cli import main
from tests.data.convert.fixtures import voc_object, voc_xml, write_voc
from tests.faults.processes import train_args
from tests.helpers import tiny_synth

pytestmark = pytest.mark.faults


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_no_command_changes_a_file_of_the_users_dataset(tmp_path, capsys):
    users = tmp_path / "users_dataset"
    data_yaml = tiny_synth(users)
    (users / ".lpdet-synth").unlink()  # not lpdet's own synthetic folder any more: a user's
    size = (64, 48)
    voc = write_voc(tmp_path / "users_voc", {s: (size, voc_xml(f"{s}.jpg", size, voc_object("dog", 5, 7, 40, 30)))
                                            for s in "abcd"}, {"train": ["a", "b", "c"], "val": ["d"]})
    before, before_voc = _hashes(users), _hashes(voc)
    run, out = tmp_path / "run", tmp_path / "outputs"
    val_images = users / "images" / "val"
    commands = {
        "train": train_args(data_yaml, run, epochs=1),
        "eval": ["eval", str(run), "--data", str(data_yaml), "--workers", "0", "--quiet"],
        "eval --results": ["eval", str(run), "--data", str(data_yaml), "--workers", "0", "--quiet",
                           "--results", str(out / "results.json")],
        "predict --out elsewhere": ["predict", str(run), str(val_images), "--out", str(out / "pred")],
        "data stats": ["data", "stats", "--data", str(data_yaml)],
        "data filter": ["data", "filter", "--data", str(data_yaml), "--out", str(out / "filtered")],
        "data convert": ["data", "convert", "--from", "voc", str(voc), "--out", str(out / "converted")],
        "data convert --copy-images": ["data", "convert", "--from", "voc", str(voc), "--copy-images",
                                       "--out", str(out / "converted_copy")],
        "predict --out the image folder": ["predict", str(run), str(val_images), "--out", str(val_images)],
    }
    for name, argv in commands.items():
        assert main(argv) == 0, name
        assert _hashes(voc) == before_voc, name
        after = _hashes(users)
        changed = [f for f in before if after.get(f) != before[f]]
        assert not changed, f"{name} changed or deleted {changed}"
        added = sorted(set(after) - set(before))
        # only predicting into the image folder adds files there, each NAME.pred.png, never over an input
        assert all(f.startswith("images/val/") and f.endswith(".pred.png") for f in added), (name, added)
        assert bool(added) == (name == "predict --out the image folder"), (name, added)
    print(f"{len(before)} dataset files + {len(before_voc)} VOC files hashed unchanged after "
          f"{len(commands)} commands")
