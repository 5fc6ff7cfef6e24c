"""Tiny datasets in the VOC and YOLO formats, written by hand (images made with PIL)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import PIL.Image


def make_image(path: Path, size: tuple[int, int], exif_orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = PIL.Image.new("RGB", size, (90, 120, 150))
    if exif_orientation is None:
        img.save(path)
    else:
        exif = PIL.Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(path, exif=exif)
    return path


def voc_object(name: str, xmin, ymin, xmax, ymax, difficult: int | None = 0) -> str:
    diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    return (f"<object><name>{name}</name><truncated>1</truncated>{diff}<bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def voc_xml(filename: str, size: tuple[int, int], *objects: str) -> str:
    return (f"<annotation><folder>VOC</folder><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{''.join(objects)}</annotation>")


def write_voc(root: Path, files: dict[str, tuple[tuple[int, int] | None, str | None]],
              splits: dict[str, list[str]] | None) -> Path:
    """files: stem -> (image size or None for no image, XML text or None for no XML)."""
    for stem, (size, xml) in files.items():
        if size is not None:
            make_image(root / "JPEGImages" / f"{stem}.jpg", size)
        if xml is not None:
            (root / "Annotations").mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / f"{stem}.xml").write_text(xml)
    for split, stems in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(s + "\n" for s in stems))
    return root


def tree_digest(root: Path) -> str:
    """A hash of every path, size and content under `root` (to prove the source is untouched)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()
