"""A `txlab up` refused because its ports are taken (another one runs) leaves the running one's pid and hold
files alone: it once removed them, and the dashboard's kill and hold stopped working on the running system."""

import socket

import pytest

from services.common.settings import Settings
from services.supervisor import PortInUse, Supervisor, hold_file, pid_file


async def test_a_refused_start_leaves_the_running_supervisors_control_files(tmp_path):
    with socket.socket() as running:  # the running system's order service
        running.bind(("127.0.0.1", 0))
        running.listen()
        settings = Settings(data_dir=tmp_path, order_port=running.getsockname()[1])
        pid, held = pid_file(settings, "order"), hold_file(settings, "order")
        pid.parent.mkdir(parents=True)
        pid.write_text("4242")
        held.touch()
        with pytest.raises(PortInUse, match="order's port"):
            async with Supervisor(settings, names=("order",)):
                pass
        assert pid.read_text() == "4242" and held.exists()
