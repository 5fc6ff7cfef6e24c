"""Small shared fixtures-as-functions for the tests: tiny datasets and tiny training configs."""

from __future__ import annotations

from pathlib import Path

from lpdet.models.config import ModelConfig
from lpdet.quant.qat import QatConfig
from lpdet.train.config import TrainConfig


def tiny_synth(root: Path, n_train: int = 12, n_val: int = 4, seed: int = 0) -> Path:
    """A tiny synthetic dataset; returns its dataset YAML."""
    from lpdet.data.synth import generate_synthetic_coco

    return generate_synthetic_coco(root, n_train, n_val, seed=seed, progress=False)


def tiny_train_config(data_yaml: Path, out: Path, *, arch: str = "mobilenet_v2_ssdlite", width: float = 0.25,
                      resolution: int = 96, qat: bool = False, qat_freeze_bn_after: int = 0,
                      qat_freeze_observers_after: int = 0, **overrides) -> TrainConfig:
    """A model and schedule small enough to train in seconds on 2 cores."""
    settings = dict(data=str(data_yaml), model=ModelConfig(arch, num_classes=0, width=width, resolution=resolution),
                    qat=QatConfig(freeze_bn_after=qat_freeze_bn_after, freeze_observers_after=qat_freeze_observers_after)
                    if qat else None, epochs=2, batch_size=4, lr=0.01, warmup_steps=2, workers=0, out=out,
                    checkpoint_every=2, threads=1,
                    precision="fp32")  # bit-exact runs (resume tests); bf16 has its own test
    settings.update(overrides)
    return TrainConfig(**settings)


def overfit_detector(root: Path, resolution: int, n_images: int = 8):
    """A width-0.5 MobileNetV2-SSDLite overfitted for 40 steps on 4 of `n_images` real
    (synthetic-dataset) images, so that its detections mean something; returns (detector in eval
    mode, dataset, images)."""
    import torch

    from lpdet.data.coco import CocoDetection
    from lpdet.data.spec import load_dataset_yaml
    from lpdet.data.synth import generate_synthetic_coco
    from lpdet.data.transforms import eval_transforms
    from lpdet.models.loss import multibox_loss
    from lpdet.models.config import ModelConfig
    from lpdet.models.registry import build_detector

    spec = load_dataset_yaml(generate_synthetic_coco(root / "data", 0, n_images, seed=1, progress=False))
    dataset = CocoDetection(spec.val.annotations, spec.val.images, transform=eval_transforms(resolution))
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([image for image, _ in items])
    targets = [{"boxes": t["boxes"] / resolution, "labels": t["labels"]} for _, t in items]
    torch.manual_seed(0)
    detector = build_detector(ModelConfig("mobilenet_v2_ssdlite", dataset.num_classes, width=0.5,
                                          resolution=resolution))
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.05, momentum=0.9)
    detector.train()
    for _ in range(40):
        cls_logits, box_deltas = detector(images[:4])
        loss = multibox_loss(cls_logits, box_deltas, targets[:4], detector.anchors)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    detector.eval()
    return detector, dataset, images
