"""Settings that cannot work together are refused with the reason, and the 3PC timeout has both names."""

import pytest
from pydantic import ValidationError

from services.common.settings import Settings


def test_the_3pc_timeout_must_outlast_phase_one_and_the_in_doubt_sweep_must_outlast_it():
    Settings(tcc_deadline_seconds=2, threepc_timeout_seconds=3, indoubt_seconds=4)
    for deadline, timeout, indoubt in ((5, 5, 30), (5, 2, 30), (2, 30, 30)):
        with pytest.raises(ValidationError, match="TXLAB_3PC_TIMEOUT_SECONDS"):
            Settings(tcc_deadline_seconds=deadline, threepc_timeout_seconds=timeout, indoubt_seconds=indoubt)


def test_a_child_process_reads_the_3pc_timeout_its_parent_gave_it(monkeypatch):
    monkeypatch.setenv("TXLAB_3PC_TIMEOUT_SECONDS", "20")  # what the user exported
    parent = Settings().model_copy(update={"threepc_timeout_seconds": 7.0})  # what a scenario chose
    for name, value in parent.child_env().items():
        monkeypatch.setenv(name, value)
    assert Settings().threepc_timeout_seconds == 7.0
