import onnxruntime as ort
import pytest

from lpdet.deploy import runtime
from lpdet.deploy.cpu_int8 import cpu_flags, needs_exact_int8_kernels

AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl"}


@pytest.mark.parametrize("flags, exact", [
    (AVX2, True),                                 # u8 x s8 pairs summed in int16: saturates
    (AVX512, True),                               # AVX-512 before VNNI (Skylake-SP): saturates too
    (AVX512 | {"avx512_vnni"}, False),            # Cascade Lake, Ice Lake, Zen 4
    (AVX2 | {"avx_vnni"}, False),                 # Alder Lake
    (AVX512 | {"avx512_vnni", "amx_int8", "amx_tile"}, False),  # Sapphire Rapids
    (set(), True),                                # unknown: exact is the safe side
])
def test_exact_kernels_only_on_x86_cpus_that_saturate(flags, exact):
    assert needs_exact_int8_kernels(flags, machine="x86_64") is exact


def test_non_x86_cpus_never_need_them():
    assert not needs_exact_int8_kernels(set(), machine="aarch64")
    assert not needs_exact_int8_kernels(AVX2, machine="arm64")


def test_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") is None
    (tmp_path / "empty").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "empty") is None
    monkeypatch.setattr("lpdet.deploy.cpu_int8.cpu_flags", lambda: None)
    assert needs_exact_int8_kernels(machine="x86_64")  # unreadable flags: exact


@pytest.mark.parametrize("decision", [True, False])
def test_onnx_session_sets_the_option_as_decided(monkeypatch, decision):
    entries = []
    original = ort.SessionOptions.add_session_config_entry

    class Options(ort.SessionOptions):
        def add_session_config_entry(self, key, value):
            entries.append((key, value))
            return original(self, key, value)

    monkeypatch.setattr(runtime.ort, "SessionOptions", Options)
    monkeypatch.setattr(runtime, "needs_exact_int8_kernels", lambda: decision)
    monkeypatch.setattr(runtime.ort, "InferenceSession", lambda source, options, providers: options)
    assert (("session.x64quantprecision", "1") in entries) is False
    runtime.onnx_session("unused.onnx")
    assert (("session.x64quantprecision", "1") in entries) is decision
    entries.clear()
    runtime.onnx_session("unused.onnx", exact_int8_kernels=not decision)  # an explicit choice wins
    assert (("session.x64quantprecision", "1") in entries) is (not decision)
