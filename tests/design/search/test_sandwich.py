"""Super-network training by weight sharing: a candidate equal to the largest network computes the
supernet's outputs, and a sub-network's gradient lands only on the shared channels it uses."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from lpdet.design.search.sandwich import live_supernet, sandwich_losses, shared_forward, supernet_candidate
from lpdet.models.arch_space import sample_candidate, smallest_candidate, to_model_config
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.models.inherit import Supernet, detector_layers, inherit
from lpdet.models.registry import build_detector
from tests.design.search.conftest import tiny_settings


ARCHS = pytest.mark.parametrize("arch", ["mobilenet_v2_ssdlite", "mobilenet_v1_ssd"])


def _settings(tmp_path, arch: str = "mobilenet_v2_ssdlite"):
    settings = tiny_settings(tmp_path / "lock")
    settings.space = replace(settings.space, arch=arch)
    return settings


def _model_and_batch(settings, seed: int = 0):
    torch.manual_seed(seed)
    largest = supernet_candidate(settings)
    model = build_detector(to_model_config(largest, 3))
    images = torch.rand(2, 3, largest.resolution, largest.resolution)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([2])}]
    return model, images, targets


@ARCHS
def test_largest_candidate_on_shared_weights_is_the_supernet(tmp_path, arch):
    settings = _settings(tmp_path, arch)
    model, images, _ = _model_and_batch(settings)
    model.eval()
    module = build_detector(model.config).eval()  # other random weights: ignored by shared_forward
    with torch.no_grad():
        expected = model(images)
        shared = shared_forward(module, live_supernet(model), images)
    for a, b in zip(expected, shared):
        assert torch.equal(a, b)


def test_trained_supernet_and_its_inherited_largest_candidate_agree(tiny_search):
    settings, _, checkpoint = tiny_search
    ckpt = load_checkpoint(checkpoint)
    assert ckpt.model_config.detail == supernet_candidate(settings).detail
    supernet = build_detector(ckpt.model_config)
    supernet.load_state_dict(ckpt.model_state)
    inherited = inherit(ckpt.model_config, Supernet.from_state(ckpt.model_config, ckpt.model_state))
    images = torch.rand(1, 3, ckpt.model_config.resolution, ckpt.model_config.resolution)
    with torch.no_grad():
        for a, b in zip(supernet.eval()(images), inherited.eval()(images)):
            assert torch.equal(a, b)


@ARCHS
def test_sub_network_gradient_lands_only_on_its_shared_channels(tmp_path, arch):
    settings = _settings(tmp_path, arch)
    model, images, targets = _model_and_batch(settings)
    model.train()
    smallest = replace(smallest_candidate(settings.space), width=settings.width)
    sandwich_losses(model, [], images, targets, images.shape[-1])
    alone = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    losses = sandwich_losses(model, [smallest], images, targets, images.shape[-1])
    assert len(losses) == 2
    sub_state = build_detector(to_model_config(smallest, 3)).state_dict()
    layer = next(layer for layer in detector_layers(model.config) if layer.out_group and not layer.depthwise
                 and sub_state[f"{layer.conv}.weight"].shape[0] < model.state_dict()[f"{layer.conv}.weight"].shape[0])
    name = f"{layer.conv}.weight"
    extra = (dict(model.named_parameters())[name].grad - alone[name]).abs().sum(dim=(1, 2, 3))
    used = live_supernet(model).channels(layer.out_group, sub_state[name].shape[0])
    unused = sorted(set(range(extra.numel())) - set(used.tolist()))
    assert (extra[used] > 0).all()  # the smallest network's loss reached every channel it uses
    assert torch.equal(extra[unused], torch.zeros(len(unused)))  # and no other


def test_random_sub_networks_at_other_resolutions_train(tmp_path):
    settings = tiny_settings(tmp_path / "lock")
    model, images, targets = _model_and_batch(settings, seed=1)
    model.train()
    candidates = [replace(sample_candidate(settings.space, random.Random(s)), width=settings.width) for s in (1, 2, 3)]
    assert {c.resolution for c in candidates} != {images.shape[-1]}  # at least one sees a resized batch
    losses = sandwich_losses(model, candidates, images, targets, images.shape[-1])
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
