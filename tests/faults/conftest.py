"""Shared by the fault tests: one tiny dataset and the uninterrupted float and QAT runs to compare with."""

import pytest

from lpdet.cli import main
from tests.faults.processes import train_args
from tests.helpers import tiny_synth


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory):
    return tiny_synth(tmp_path_factory.mktemp("fault_data"))


@pytest.fixture(scope="session")
def float_reference(fault_data, tmp_path_factory):
    """An uninterrupted float run (in this process: the same code and settings as a subprocess)."""
    out = tmp_path_factory.mktemp("float_ref") / "run"
    assert main(train_args(fault_data, out)) == 0
    return out


@pytest.fixture(scope="session")
def qat_reference(fault_data, float_reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat_ref") / "run"
    assert main(train_args(fault_data, out, qat_init=float_reference / "last")) == 0
    return out


@pytest.fixture(scope="session")
def launcher():
    from tests.faults.processes import Launcher

    started = Launcher()
    yield started
    started.close()
