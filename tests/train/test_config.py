import pytest
import torch

from lpdet.errors import LpdetError
from lpdet.quant.qat import QatConfig
from lpdet.train.config import TrainConfig, load_train_config
from lpdet.train.loop import _resolve_device, _use_bf16


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


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_precision_names_accepted(precision):
    TrainConfig(precision=precision).validate()


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(LpdetError, match="--precision must be one of auto, fp32, bf16"):
        TrainConfig(precision="fp16").validate()


def test_bf16_with_qat_is_refused():
    with pytest.raises(LpdetError, match="cannot be combined with --qat"):
        TrainConfig(precision="bf16", qat=QatConfig()).validate()
    assert not _use_bf16("auto", torch.device("cpu"), qat=True)  # auto QAT: fp32


def test_fp32_never_autocasts():
    assert not _use_bf16("fp32", torch.device("cpu"), qat=False)


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not _use_bf16("auto", torch.device("cpu"), qat=False)
    with pytest.raises(LpdetError, match="no native bf16 support; use --precision fp32"):
        _use_bf16("bf16", torch.device("cpu"), qat=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert _use_bf16("auto", torch.device("cpu"), qat=False) == torch.backends.mkldnn.is_available()


def test_a_flat_config_yaml_of_an_earlier_version_still_loads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("data: synth\narch: mobilenet_v1_ssd\nwidth: 0.5\nresolution: 128\nepochs: 3\n"
                    "qat: true\nqat_freeze_bn_after: 5\nqat_freeze_observers_after: 7\n")
    cfg = load_train_config(path)
    assert (cfg.model.arch, cfg.model.width, cfg.model.resolution, cfg.epochs) == ("mobilenet_v1_ssd", 0.5, 128, 3)
    assert cfg.qat == QatConfig(freeze_bn_after=5, freeze_observers_after=7)
    path.write_text("data: synth\nresolution: 96\nqat: false\n")
    assert load_train_config(path).qat is None and load_train_config(path).model.resolution == 96
