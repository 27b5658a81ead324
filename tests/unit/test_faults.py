import subprocess
import sys
from dataclasses import replace

import pytest

from services.common.faults import (
    CRASH_EXIT_CODE,
    Arming,
    FaultInjector,
    FaultSpecError,
    FiredCounts,
    InjectedFault,
    parse_spec,
)


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


async def test_unarmed_point_is_a_no_op_without_file_io(tmp_path, monkeypatch):
    def no_file_io(*_: object) -> None:
        raise AssertionError("an unarmed point touched the counts file")

    faults = FaultInjector("order", tmp_path)
    monkeypatch.setattr(FiredCounts, "_locked", no_file_io)
    monkeypatch.setattr(FiredCounts, "read", no_file_io)
    assert await faults.hit("relay.after_publish") is None


async def test_error_fires_exactly_times_then_stops(tmp_path):
    faults = FaultInjector("order", tmp_path)
    arming = Arming("relay.after_publish", "error", times=2)
    faults.arm(arming)
    for _ in range(2):
        with pytest.raises(InjectedFault):
            await faults.hit("relay.after_publish")
    assert await faults.hit("relay.after_publish") is None
    assert faults.fired_by(arming.id) == {"order": 2}
    assert faults.status() == [arming.request() | {"id": arming.id, "fired": 2, "fired_here": 2}]


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
    arming = Arming("order.after_local_commit", "crash", times=1)
    FaultInjector("order", tmp_path).arm(arming)
    script = (f"import asyncio; from pathlib import Path; from services.common.faults import FaultInjector; "
              f"f = FaultInjector('order', Path({str(tmp_path)!r})); "
              f"asyncio.run(f.hit('order.after_local_commit')); print('survived')")
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.returncode == CRASH_EXIT_CODE
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert second.returncode == 0 and "survived" in second.stdout
    assert FaultInjector("order", tmp_path).fired_by(arming.id) == {"order": 1}


async def test_times_counts_across_processes_sharing_the_state_dir(tmp_path):
    arming = parse_spec("relay.after_publish=error,times=1")
    processes = [FaultInjector(name, tmp_path) for name in ("order", "inventory", "payment")]
    for faults in processes:
        faults.arm(replace(arming))  # what the admin API hands each service: one arming, one id
    fired = 0
    for faults in processes * 3:
        try:
            await faults.hit("relay.after_publish")
        except InjectedFault:
            fired += 1
    assert fired == 1
    assert processes[2].fired_by(arming.id) == {"order": 1}


async def test_disarming_forgets_the_count_and_stops_the_arming_in_processes_not_yet_disarmed(tmp_path):
    arming = parse_spec("relay.after_publish=error,times=2")
    order, inventory = FaultInjector("order", tmp_path), FaultInjector("inventory", tmp_path)
    order.arm(arming)
    inventory.arm(replace(arming))
    with pytest.raises(InjectedFault):
        await order.hit("relay.after_publish")
    order.disarm()
    assert order.fired_by(arming.id) == {}
    assert await inventory.hit("relay.after_publish") is None  # the admin's disarming has not reached it yet
    rearmed = parse_spec("relay.after_publish=error,times=2")
    order.arm(rearmed)
    with pytest.raises(InjectedFault):
        await order.hit("relay.after_publish")
    assert order.fired_by(rearmed.id) == {"order": 1}


RACER = """
import asyncio, sys, time
from pathlib import Path
from services.common.faults import FaultInjector, InjectedFault

faults = FaultInjector(sys.argv[1], Path(sys.argv[2]))
print("ready", flush=True)
while not (Path(sys.argv[2]) / "go").exists():
    time.sleep(0.001)

async def main() -> int:
    fired = 0
    for _ in range(300):
        try:
            await faults.hit("relay.after_publish")
        except InjectedFault:
            fired += 1
    return fired

print(asyncio.run(main()))
"""


def test_processes_racing_at_one_point_fire_exactly_times_in_all(tmp_path):
    arming = parse_spec("relay.after_publish=error,times=3")
    names = ("order", "inventory", "payment", "order")  # four processes, two of them of one service
    for name in set(names):
        FaultInjector(name, tmp_path).arm(replace(arming))
    racers = [subprocess.Popen([sys.executable, "-c", RACER, name, str(tmp_path)], stdout=subprocess.PIPE, text=True)
              for name in names]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    (tmp_path / "go").touch()
    outputs = [racer.communicate(timeout=60)[0] for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), outputs
    assert sum(int(out.strip()) for out in outputs) == 3
    assert sum(FaultInjector("order", tmp_path).fired_by(arming.id).values()) == 3


def test_crash_with_times_1_armed_in_two_processes_crashes_one_of_them_once(tmp_path):
    arming = parse_spec("relay.after_publish=crash,times=1")
    for name in ("order", "inventory"):
        FaultInjector(name, tmp_path).arm(replace(arming))
    script = ("import asyncio, sys; from pathlib import Path; from services.common.faults import FaultInjector; "
              f"f = FaultInjector(sys.argv[1], Path({str(tmp_path)!r})); "
              "asyncio.run(f.hit('relay.after_publish')); print('survived')")
    codes = [subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True).returncode
             for name in ("order", "inventory", "order", "inventory")]
    assert codes.count(CRASH_EXIT_CODE) == 1 and codes.count(0) == 3, codes


def test_none_and_random_stand_alone_in_a_fault_plan():
    from services.demo import fault_plan

    assert fault_plan(["none"]) == [] and len(fault_plan(["random"], "outbox")) > 0
    for specs in (["random", "relay.after_publish=crash"], ["relay.after_publish=crash", "none"]):
        with pytest.raises(FaultSpecError, match="none and random stand alone"):
            fault_plan(specs)
