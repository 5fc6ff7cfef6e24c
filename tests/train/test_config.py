import pytest
import torch

from lpdet.errors import LpdetError
from lpdet.train.config import TrainConfig
from lpdet.train.loop import _resolve_device


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "auto"])
def test_device_names_accepted(device):
    TrainConfig(device=device).validate()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "", "mps:0"])
def test_unknown_device_is_a_clear_error(device):
    with pytest.raises(LpdetError, match="--device must be cpu, cuda, cuda:N or auto"):
        TrainConfig(device=device).validate()


def test_auto_device_falls_back_to_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert _resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_names_the_fix():
    with pytest.raises(LpdetError, match="CUDA is not available.*--device cpu"):
        _resolve_device("cuda")
