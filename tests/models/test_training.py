import torch

from lpdet.models.loss import multibox_loss
from lpdet.models.postprocess import postprocess
from lpdet.models.config import ModelConfig
from lpdet.models.registry import build_detector



def test_overfits_one_tiny_batch():
    torch.manual_seed(0)
    detector = build_detector(ModelConfig("mobilenet_v2_ssdlite", num_classes=2, width=0.25, resolution=128))
    images = torch.rand(2, 3, 128, 128)
    targets = [
        {"boxes": torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.6, 0.5, 0.9, 0.9]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[0.3, 0.2, 0.8, 0.7]]), "labels": torch.tensor([2])},
    ]
    optimizer = torch.optim.Adam(detector.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = multibox_loss(*detector(images), targets, detector.anchors)
        assert torch.isfinite(out["loss"])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses
    # Post-processing runs end to end on the trained model's outputs.
    detector.eval()
    with torch.no_grad():
        detections = postprocess(*detector(images), detector.anchors)
    assert len(detections) == 2
