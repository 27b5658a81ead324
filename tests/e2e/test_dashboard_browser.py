"""The dashboard in a real browser: Debian's chromium driven by Playwright (no browser download), on a running
system with its coordinator. Each test also proves that the browser console showed no error.

Screenshots go to $TXLAB_SCREENSHOT_DIR (the README's, under docs/, are made with TXLAB_SCREENSHOT_DIR=docs),
else to the test's temporary directory."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from services.demo import Client

from .conftest import PLAN, own_system, place, settled

CHROMIUM = os.environ.get("TXLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT_MS = 60_000  # generous: the machine is shared
FAILED_CONFIRMS = 6  # with the coordinator's backoff (0.2 s doubling, jitter to half), seconds of retrying

settings, system = own_system("dashboard-browser", coordinator=True)

RICH = [cid for cid, _, balance in PLAN.customer_rows() if balance == PLAN.balance_cents]
SKUS = [sku for sku, _, _, stock in PLAN.catalogue() if stock == PLAN.stock]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = Path(os.environ.get("TXLAB_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture(scope="module")
async def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM}: scripts/system-packages installs Debian's chromium")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


class Console:
    """Every error the page logged or raised."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page) -> None:
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))


@pytest.fixture(scope="module")
async def logged_in(settings, system, browser):
    """A page logged in through the login form (the session cookie), and its console."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, base_url=settings.url("admin"))
    page = await context.new_page()
    console = Console()
    console.watch(page)
    await page.goto("/ui")
    assert page.url.endswith("/ui/login?next=/ui")
    await page.fill("input[name=token]", "not-the-token")
    await page.click("button[type=submit]")
    await page.wait_for_selector("text=not the admin token")
    console.errors.clear()  # the browser logs the 401 of that wrong login; the page itself did nothing wrong
    await page.fill("input[name=token]", settings.admin_token)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/ui")
    yield page, console
    await context.close()


@pytest.fixture
async def ui(logged_in):
    page, console = logged_in
    console.errors.clear()
    yield page
    assert not console.errors, console.errors


async def place_tcc(settings, i: int) -> str:
    client = Client(settings, retry_for=90.0)
    try:
        (oid,) = await place(client, [{"customer_id": RICH[i], "pattern": "tcc",
                                       "items": [{"sku": SKUS[i], "qty": 1}, {"sku": SKUS[i + 1], "qty": 2}]}])
    finally:
        await client.aclose()
    return oid


async def connected(page) -> None:
    """The page's event stream is open (the header's live mark turns on at the stream's open event)."""
    await page.wait_for_selector("#live-state.on", timeout=WAIT_MS)


async def test_the_event_stream_connects_and_the_overview_shows_constant_totals(ui, shots):
    await ui.goto("/ui")
    await connected(ui)
    await ui.wait_for_selector("svg.chart polyline", state="attached", timeout=WAIT_MS)
    await ui.wait_for_function("!document.querySelector('#invariant-badge').textContent.includes('checking')",
                               timeout=WAIT_MS)
    assert await ui.locator("svg.chart").count() == 2
    for chart in await ui.locator("svg.chart text").all_text_contents():
        if chart.startswith("total"):
            assert "(constant)" in chart, chart
    await ui.screenshot(path=shots / "ui-overview.png", full_page=True)


async def test_a_new_order_appears_without_a_reload_and_reaches_its_final_state(settings, ui, shots):
    await ui.goto("/ui/transactions")
    await connected(ui)
    await ui.evaluate("window.notReloaded = true")
    oid = await place_tcc(settings, 0)
    row = ui.locator(f'tr[data-id="{oid}"]')
    await row.wait_for(timeout=WAIT_MS)
    await ui.locator(f'tr[data-id="{oid}"][data-status="PAID"]').wait_for(timeout=WAIT_MS)
    assert await ui.evaluate("window.notReloaded === true")  # the stream swapped it in: the page never reloaded
    assert "CONFIRMED" in await row.inner_text()
    await ui.screenshot(path=shots / "ui-transactions.png", full_page=True)


async def test_the_detail_page_shows_every_branch_and_a_force_stop_asks_for_confirmation(settings, ui, shots):
    oid = await place_tcc(settings, 2)
    assert (await settled(settings, [oid], within=90.0))[oid] == "PAID"
    await ui.goto(f"/ui/tx/{oid}")
    await connected(ui)
    for branch in ("inventory", "payment"):
        assert "CONFIRMED" in await ui.locator(f'tr[data-branch="{branch}"]').inner_text()
    timeline = await ui.locator("#timeline").inner_text()
    assert "decided commit" in timeline and "barrier inventory/confirm" in timeline
    await ui.screenshot(path=shots / "ui-transaction.png", full_page=True)

    asked: list[str] = []

    async def dismiss(dialog) -> None:
        asked.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    ui.once("dialog", dismiss)
    async with ui.expect_event("dialog", timeout=WAIT_MS):
        await ui.click("#force-stop")
    await ui.wait_for_timeout(500)
    assert asked and asked[0].startswith("confirm: Force-stop") and oid in asked[0], asked
    assert await ui.locator("#flash").inner_text() == ""  # dismissed: nothing was sent
    assert "CONFIRMED" in await ui.locator('tr[data-branch="payment"]').inner_text()


async def test_the_detail_page_shows_a_trace_with_publish_and_consume_spans(settings, ui, admin, shots):
    client = Client(settings, retry_for=90.0)
    try:
        (oid,) = await place(client, [{"customer_id": RICH[4], "pattern": "outbox",
                                       "items": [{"sku": SKUS[4], "qty": 1}]}])
    finally:
        await client.aclose()
    assert (await settled(settings, [oid], within=90.0))[oid] == "PAID"
    await ui.goto(f"/ui/tx/{oid}")
    await connected(ui)
    await ui.locator('#waterfall .span-row[data-kind="consumer"]').first.wait_for(timeout=WAIT_MS)
    names = await ui.locator("#waterfall .span-row").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert any(n.startswith("publish ") for n in names) and any(n.startswith("consume ") for n in names), names
    await ui.screenshot(path=shots / "ui-trace.png", full_page=True)


async def test_an_injected_fault_shows_as_retrying_then_completes_with_the_totals_constant(settings, ui, admin,
                                                                                          shots):
    await ui.goto("/ui/faults")
    await connected(ui)
    await ui.select_option("#arm-form select[name=point]", "payment.tcc.confirm")
    await ui.select_option("#arm-form select[name=action]", "error")
    await ui.fill("#arm-form input[name=times]", str(FAILED_CONFIRMS))
    ui.once("dialog", lambda dialog: dialog.accept())
    await ui.click("#arm-form button[type=submit]")
    await ui.wait_for_selector("#flash .ok", timeout=WAIT_MS)
    await ui.locator('#armed tr[data-point="payment.tcc.confirm"]').wait_for(timeout=WAIT_MS)
    await ui.screenshot(path=shots / "ui-faults.png")
    try:
        oid = await place_tcc(settings, 6)
        await ui.goto(f"/ui/tx/{oid}")
        await connected(ui)
        # retrying: decided commit, the payment branch's Confirm failed and waits for its next attempt
        await ui.wait_for_function(
            """() => document.querySelector('#global-state')?.textContent === 'CONFIRMING'
                 && Number(document.querySelector('tr[data-branch="payment"] .attempts')?.textContent) > 0""",
            timeout=WAIT_MS)
        assert (await ui.locator('tr[data-branch="payment"] .reason').inner_text()).strip()  # why it failed
        await ui.screenshot(path=shots / "ui-retrying.png", full_page=True)
        await ui.wait_for_selector('#global-state:has-text("CONFIRMED")', timeout=WAIT_MS)
        await ui.wait_for_selector('#order-status:has-text("PAID")', timeout=WAIT_MS)
        timeline = await ui.locator("#timeline").inner_text()
        retries = re.findall(r"payment: attempt \d+ failed", timeline)
        assert len(retries) == FAILED_CONFIRMS, timeline  # each armed error failed a Confirm, retried till it passed
    finally:
        await admin.delete("/faults")
    await ui.goto("/ui")
    await connected(ui)
    # the period the fault was armed, shaded
    await ui.wait_for_selector("svg.chart rect.fault", state="attached", timeout=WAIT_MS)
    texts = await ui.locator("svg.chart text").all_text_contents()
    assert sum("(constant)" in t for t in texts) == 2, texts
    await ui.screenshot(path=shots / "ui-overview-fault.png", full_page=True)


async def test_killing_the_coordinator_leader_shows_a_new_leader_with_a_higher_term(ui, shots):
    await ui.goto("/ui/raft")
    await connected(ui)
    leader = ui.locator('#coordinator-cluster .node[data-role="leader"]')
    await leader.wait_for(timeout=WAIT_MS)
    old_node, old_term = await leader.get_attribute("data-node"), int(await leader.get_attribute("data-term"))
    ui.once("dialog", lambda dialog: dialog.accept())
    await leader.locator("button", has_text="kill").click()
    await ui.wait_for_selector("#flash .ok", timeout=WAIT_MS)
    await ui.wait_for_function(
        """([old, term]) => [...document.querySelectorAll('#coordinator-cluster .node[data-role="leader"]')]
             .some(n => n.dataset.node !== old && Number(n.dataset.term) > term)""",
        arg=[old_node, old_term], timeout=WAIT_MS)
    killed = ui.locator(f'#coordinator-cluster .node[data-node="{old_node}"]')
    assert await killed.get_attribute("data-role") == "down"
    elections = await ui.locator("#coordinator-cluster .elections").inner_text()
    assert f"coordinator-{old_node} leads term {old_term}" in elections, elections  # remembered after its death
    await ui.screenshot(path=shots / "ui-raft.png", full_page=True)
    ui.once("dialog", lambda dialog: dialog.accept())
    await killed.locator("button", has_text="restart").click()
    await ui.wait_for_selector(f'#coordinator-cluster .node[data-node="{old_node}"][data-role="follower"]',
                               timeout=WAIT_MS)


async def test_the_cache_ring_is_drawn_with_each_nodes_arcs(settings, ui, shots):
    await ui.goto("/ui/cache")
    await connected(ui)
    await ui.wait_for_selector("svg.ring path.arc", state="attached", timeout=WAIT_MS)
    owners = set(await ui.locator("svg.ring path.arc title").all_text_contents())
    assert len(owners) == len(settings.cache_nodes.split(","))
    await ui.screenshot(path=shots / "ui-cache.png", full_page=True)
