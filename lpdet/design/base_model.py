"""Where the design's float base detector comes from (step 1 of the flow).

Three starts, in this order of precedence:
* ``--base CKPT``: a float detector of the user's; its architecture, width and resolution become the
  design's (the flow fine-tunes it, it does not train another);
* the detector shipped with lpdet (`lpdet.models.shipped`) when the data is the embedded ``synth``
  set and nothing asks otherwise (``--from-scratch``, ``--backbone-weights``, another architecture
  or width);
* a float training by the flow: from scratch, or from ImageNet backbone weights
  (``--backbone-weights FILE``, torchvision's MobileNet state dict layout).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from lpdet.data.sizes import read_coco_json
from lpdet.data.spec import load_dataset_yaml
from lpdet.design.settings import DesignSettings
from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.models.config import ModelConfig
from lpdet.models.shipped import SYNTH_BASE, shipped_base_for, synth_base_provenance

__all__ = ["BaseSource", "BaseStart", "choose_base", "check_base_classes"]


class BaseSource(Enum):
    SHIPPED = "the detector shipped with lpdet for the embedded synthetic data"
    GIVEN = "--base"
    TRAINED = "trained by this design"


@dataclass(frozen=True)
class BaseStart:
    source: BaseSource
    checkpoint: Path | None  # None: the flow trains it (step 1)
    description: str  # one sentence for the report
    class_names: tuple[str, ...] = ()  # the checkpoint's classes, in label order (none when trained here)


def choose_base(settings: DesignSettings, data: str, *, arch: str | None = None,
                width: float | None = None) -> tuple[DesignSettings, BaseStart]:
    """The base start for `settings` and `data` (see the module docstring), and the settings with the
    base's architecture, width and resolution. `arch` / `width`: what the user asked for, if anything."""
    s = settings
    if s.base is not None:
        return _given_base(s, Path(s.base), arch, width)
    if data == "synth" and not s.from_scratch and s.backbone_weights is None:
        shipped_ckpt = shipped_base_for(arch or s.arch, width or s.width)
        if shipped_ckpt is not None:
            shipped = shipped_ckpt.model_config
            info = synth_base_provenance()
            ap = info.get("val_metrics", {}).get("AP")
            text = (f"{BaseSource.SHIPPED.value} ({shipped.arch}, width {shipped.width:g}, "
                    f"{shipped.resolution}x{shipped.resolution}, AP {ap:.3f} on val; trained offline by "
                    f"scripts/train_synth_base.py, {SYNTH_BASE}); --from-scratch trains one instead")
            return (_settings_for(s, shipped),
                    BaseStart(BaseSource.SHIPPED, SYNTH_BASE, text, tuple(shipped_ckpt.class_names)))
    how = (f"from ImageNet backbone weights {s.backbone_weights}" if s.backbone_weights is not None
           else "from scratch")
    return s, BaseStart(BaseSource.TRAINED, None, f"float {s.arch} (width {s.width:g}) at {s.base_resolution}x"
                                                  f"{s.base_resolution}, {BaseSource.TRAINED.value} {how}")


def _settings_for(s: DesignSettings, base: ModelConfig) -> DesignSettings:
    """`s` with the base's architecture, width, resolution and anchors: the design's models are its."""
    return replace(s, arch=base.arch, width=base.width, base_resolution=base.resolution,
                   anchor_grid=base.anchor_grid, anchor_reference=base.anchor_reference)


def _given_base(s: DesignSettings, path: Path, arch: str | None,
                width: float | None) -> tuple[DesignSettings, BaseStart]:
    try:
        ckpt = load_checkpoint(path)
    except LpdetError as e:
        raise LpdetError(f"--base: {e}") from None
    config = ckpt.model_config
    if config.quantization != "fp32":
        raise LpdetError(f"--base {path}: a QAT checkpoint; pass the float detector it was trained from "
                         "(the design runs QAT itself)")
    if config.detail is not None:
        raise LpdetError(f"--base {path}: a searched architecture (arch config); the design starts from "
                         "standard MobileNet detectors only")
    for option, asked, actual in (("--arch", arch, config.arch), ("--width", width, config.width)):
        if asked is not None and asked != actual:
            raise LpdetError(f"{option} {asked} contradicts --base {path} ({actual}); drop {option}: the base "
                             "decides the architecture")
    text = (f"{config.arch} (width {config.width:g}, {config.resolution}x{config.resolution}) from "
            f"{BaseSource.GIVEN.value} {path}")
    return (_settings_for(s, config),
            BaseStart(BaseSource.GIVEN, path, text, tuple(ckpt.class_names)))


def check_base_classes(start: BaseStart, data_yaml: Path) -> None:
    """A base detector must know the dataset's classes, in the same order (labels are positions)."""
    if start.checkpoint is None:
        return
    spec = load_dataset_yaml(data_yaml)
    categories = sorted(read_coco_json(spec.train.annotations)["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    have = list(start.class_names)
    if have != names:
        raise LpdetError(f"the base detector {start.checkpoint} was trained on classes {have}, the dataset has "
                         f"{names}; pass a --base trained on this dataset, or --from-scratch")
