"""`txlab scenario halfmsg-checkback`: the two crashes RocketMQ's check-back exists for, on real processes.

A system of its own (own databases, queues and ports, short check-back timings) runs the halfmsg pattern:
the order service sends the half message, runs its local transaction, then commits the message. The order
service is crashed twice:

1. after the half message, before the local transaction: the broker holds a message for an order that will
   never exist; its check-back finds no order past the deadline and rolls the message back;
2. after the local commit, before the commit reached the broker: the order exists but its event is held;
   the check-back finds the order and commits the message, which is delivered, and the order is decided.

For each crash it narrates what the broker held, when it checked back, what the producer answered and where
the order ended up, then runs `txlab check`. Exit 0 when both crashes ended as claimed and every invariant
holds.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
from rich.console import Console

from scenarios.own import own_settings, verdict
from services.checker import run_checks
from services.common.docs import first_paragraph
from services.common.faults import parse_spec
from services.common.settings import Settings
from services.demo import Client, order_bodies
from services.seed import SeedPlan, reset_and_seed
from services.supervisor import Supervisor

console = Console(width=120)
PLAN = SeedPlan(products=10, customers=20, stock=1_000, seed=5)


TIMINGS = {"broker_immunity_seconds": 2.0, "broker_check_interval_seconds": 1.0, "broker_max_checks": 10,
           "broker_poll_seconds": 0.2, "halfmsg_local_deadline_seconds": 1.0}


class Story:
    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings, self.client, self.t0 = settings, client, time.monotonic()
        self.broker = httpx.AsyncClient(base_url=settings.url("broker"), timeout=10.0,
                                        headers={"Authorization": f"Bearer {settings.admin_token}"})

    def say(self, text: str) -> None:
        console.print(f"[dim]{time.monotonic() - self.t0:6.2f}s[/dim]  {text}")

    async def messages_for(self, order_id: str | None = None) -> list[dict[str, Any]]:
        items = (await self.broker.get("/messages", params={"limit": 500})).json()["items"]
        return [m for m in items if order_id is None or m["body"].get("order_id") == order_id]

    async def order(self, order_id: str) -> dict[str, Any] | None:
        r = await self.client.http.get(f"{self.settings.url('order')}/orders/{order_id}")
        return r.json() if r.status_code == 200 else None

    async def crash_once(self, point: str, seed: int) -> tuple[str, str | None]:
        """Arm `point` to crash the order service once, place one order without retrying; return the half
        message's id and the order id it carries (None when the POST never answered)."""
        await self.client.admin("POST", "/faults", json=parse_spec(f"{point}=crash,times=1").request())
        before = {m["id"] for m in await self.messages_for()}
        body = order_bodies(PLAN, 1, "halfmsg", seed)[0]
        self.say(f"POST /orders (halfmsg) with [bold]{point}[/bold] armed to crash the order service")
        try:
            r = await self.client.http.post(f"{self.settings.url('order')}/orders", json=body)
            self.say(f"  the client got HTTP {r.status_code}")
        except httpx.HTTPError as exc:
            self.say(f"  the client got no answer ({exc.__class__.__name__}): the order service died mid-request")
        new = [m for m in await self.messages_for() if m["id"] not in before]
        if len(new) != 1:
            raise RuntimeError(f"expected one new half message, found {len(new)}")
        m = new[0]
        self.say(f"  the broker holds message {m['id'][:8]}… in state [bold]{m['state']}[/bold] "
                 f"for order {m['body']['order_id'][:8]}…; consumers cannot see it")
        return m["id"], m["body"]["order_id"]

    async def follow(self, message_id: str, until: tuple[str, ...], within: float = 60.0) -> dict[str, Any]:
        """Narrate the message's history as it happens, until it reaches one of `until`."""
        shown = 1  # its first entry, HALF, was told already
        deadline = time.monotonic() + within
        while True:
            m = (await self.broker.get(f"/messages/{message_id}")).json()
            for h in m["history"][shown:]:
                if h["kind"] == "check":
                    self.say(f"  check-back: the producer answered [bold]{h['answer']}[/bold]"
                             + (f" ({h['error']})" if h.get("error") else ""))
                elif h["kind"] == "transition":
                    self.say(f"  message → [bold]{h['to']}[/bold] (by {h['by']})")
                elif h["kind"] == "delivery":
                    self.say("  published to RabbitMQ, confirmed" if h["ok"] else f"  delivery failed: {h['error']}")
            shown = len(m["history"])
            if m["state"] in until:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"message {message_id} still {m['state']} after {within:.0f}s")
            await asyncio.sleep(0.1)


async def _run(settings: Settings) -> int:
    await asyncio.to_thread(reset_and_seed, settings, PLAN)
    observed: list[tuple[str, str, bool]] = []
    async with Supervisor(settings) as sup:
        client = Client(settings, retry_for=60.0)
        story = Story(settings, client)
        try:
            console.rule("[bold]1. crash after the half message, before the local transaction[/bold]")
            mid, oid = await story.crash_once("order.after_half_sent", seed=1)
            await sup.wait_healthy(60)
            story.say("  the supervisor restarted the order service; nobody will commit or roll back this message")
            m = await story.follow(mid, ("ROLLED_BACK", "DELIVERED"))
            exists = await story.order(oid) is not None
            story.say(f"  the order {'exists' if exists else 'was never created'}; the message is {m['state']}")
            observed.append(("crash after the half message", "ROLLED_BACK, no order",
                             m["state"] == "ROLLED_BACK" and not exists))

            console.rule("[bold]2. crash after the local commit, before the commit reached the broker[/bold]")
            mid, oid = await story.crash_once("order.before_half_decision", seed=2)
            await sup.wait_healthy(60)
            order = await story.order(oid)
            story.say(f"  the order exists locally: {order['status'] if order else 'missing'}; its event is held")
            m = await story.follow(mid, ("DELIVERED", "ROLLED_BACK"))
            for _ in range(300):
                order = await story.order(oid)
                if order and order["status"] != "PENDING":
                    break
                await asyncio.sleep(0.1)
            story.say(f"  the order ended [bold]{order['status'] if order else 'missing'}[/bold]")
            observed.append(("crash after the local commit", "DELIVERED, order decided",
                             m["state"] == "DELIVERED" and bool(order) and order["status"] in ("PAID", "CANCELLED")))
        finally:
            await client.admin("DELETE", "/faults")
            await story.broker.aclose()
            await client.aclose()
        report = await asyncio.to_thread(run_checks, settings, 60.0)
    return verdict(observed, report, console, "what the check-back decided", case="crash")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="txlab scenario halfmsg-checkback", description=first_paragraph(__doc__))
    p.parse_args(argv)
    with own_settings("halfmsg", **TIMINGS) as settings:
        return asyncio.run(_run(settings))
