import json
import subprocess
import sys

import pytest

from services.common.faults import CRASH_EXIT_CODE, Arming, FaultInjector, FaultSpecError, InjectedFault, parse_spec


def test_spec_parses_action_duration_times_and_probability():
    a = parse_spec("relay.after_publish=delay:250,times=3,p=0.5")
    assert (a.point, a.action, a.delay_ms, a.times, a.probability) == ("relay.after_publish", "delay", 250, 3, 0.5)


@pytest.mark.parametrize("spec, message", [
    ("nowhere=crash", "unknown fault point"),
    ("bus.publish=crash", "supports"),
    ("relay.after_publish=crash,times=0", "times"),
    ("relay.after_publish=crash,p=1.5", "probability"),
    ("relay.after_publish=delay", "delay needs a duration"),
    ("relay.after_publish=crash,when=5", "unknown option"),
    ("just words", "cannot parse"),
])
def test_bad_specs_are_refused_with_a_reason(spec, message):
    with pytest.raises(FaultSpecError, match=message):
        parse_spec(spec)


async def test_unarmed_point_is_a_no_op(tmp_path):
    faults = FaultInjector("order", tmp_path)
    assert await faults.hit("relay.after_publish") is None


async def test_error_fires_exactly_times_then_stops(tmp_path):
    faults = FaultInjector("order", tmp_path)
    faults.arm(Arming("relay.after_publish", "error", times=2))
    for _ in range(2):
        with pytest.raises(InjectedFault):
            await faults.hit("relay.after_publish")
    assert await faults.hit("relay.after_publish") is None
    assert faults.armed["relay.after_publish"].fired == 2


async def test_duplicate_and_drop_are_returned_for_the_caller(tmp_path):
    faults = FaultInjector("payment", tmp_path)
    faults.arm(Arming("bus.deliver", "duplicate"))
    faults.arm(Arming("relay.before_publish", "drop"))
    assert await faults.hit("bus.deliver") == "duplicate"
    assert await faults.hit("relay.before_publish") == "drop"


def test_point_of_another_service_cannot_be_armed(tmp_path):
    with pytest.raises(FaultSpecError, match="does not exist in the payment service"):
        FaultInjector("payment", tmp_path).arm(Arming("inventory.before_commit", "crash"))


def test_crash_is_counted_before_the_process_exits_so_a_restart_does_not_fire_it_again(tmp_path):
    FaultInjector("order", tmp_path).arm(Arming("order.after_local_commit", "crash", times=1))
    script = (f"import asyncio; from pathlib import Path; from services.common.faults import FaultInjector; "
              f"f = FaultInjector('order', Path({str(tmp_path)!r})); "
              f"asyncio.run(f.hit('order.after_local_commit')); print('survived')")
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.returncode == CRASH_EXIT_CODE
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert second.returncode == 0 and "survived" in second.stdout
    saved = json.loads((tmp_path / "order.json").read_text())
    assert saved[0]["fired"] == 1
