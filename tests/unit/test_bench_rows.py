"""The bench's rows as JSON, and its CPU count of txlab processes, without any server."""

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

from rich.console import Console

from bench.outbox import Row, load_rows, machine_cpu_seconds, render_comparison, server_cpu_seconds, txlab_cpu_seconds
from services.common.settings import Settings

ROWS = [Row(p, c, 40.0 + c, 45.0 + c, 7000.0, (40.0 + c) / 7000.0, 100.0, 300.0, 200.0, 900.0 + c, 11.0, 0.0, 25.0,
            500, 0, 0, True)
        for p in ("outbox", "2pc") for c in (8, 32, 128)]
FIELDS = {"pattern", "in_flight", "orders_per_s", "pgbench_tps", "ratio", "e2e_p99_ms", "cpu_ms_per_order",
          "refused", "invariants_hold"}


def test_a_row_carries_every_field_the_json_promises():
    assert FIELDS <= set(json.loads(json.dumps([asdict(r) for r in ROWS]))[0])


def test_cpu_is_counted_for_this_installations_processes_only(tmp_path):
    mine, other = Settings(db_prefix="txlab_cpu_test"), Settings(db_prefix="txlab_someone_else")
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    script = tmp_path / "services.run.py"  # its command line names services.run, as the services' does
    script.write_text(burn)
    proc = subprocess.Popen([sys.executable, str(script)], env=os.environ | {"TXLAB_DB_PREFIX": mine.db_prefix})
    try:
        deadline = time.monotonic() + 20
        while txlab_cpu_seconds(mine) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert txlab_cpu_seconds(mine) >= 0.25
        assert txlab_cpu_seconds(other) == 0.0
    finally:
        proc.kill()
        proc.wait()


def test_a_comparison_reads_an_earlier_runs_json_and_gives_each_figure_before_and_now(tmp_path):
    earlier = tmp_path / "before.json"
    older = [asdict(r) | {"cpu_ms_per_order": 75.0} for r in ROWS[:3]]
    for row in older:
        del row["rejected"]  # a field an older bench did not write
    earlier.write_text(json.dumps(older))
    console = Console(width=200, record=True)
    console.print(render_comparison(load_rows(earlier), ROWS))
    text = console.export_text()
    assert "75.0 → 25.0" in text and "0.33" in text, text
    assert text.count("outbox") == 3 and "2pc" not in text, "only rows both runs measured"


def test_a_process_the_kernel_names_postgres_counts_as_postgresqls_cpu():
    """A child that names itself `postgres` (prctl PR_SET_NAME, as the kernel shows a backend) and burns 0.3 s
    of CPU raises PostgreSQL's figure by about that much."""
    burn = ("import ctypes, time\nctypes.CDLL(None).prctl(15, b'postgres', 0, 0, 0)\nprint('named', flush=True)\n"
            "end = time.process_time() + 0.3\nwhile time.process_time() < end: pass\nprint('burnt', flush=True)\n"
            "time.sleep(30)")
    before = server_cpu_seconds()
    proc = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "named\n" and proc.stdout.readline() == "burnt\n"
        after = server_cpu_seconds()
        assert after["postgres"] - before["postgres"] >= 0.25
    finally:
        proc.kill()
        proc.wait()


def test_the_machines_busy_time_grows_with_work_and_never_passes_its_total():
    busy0, total0 = machine_cpu_seconds()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    busy1, total1 = machine_cpu_seconds()
    assert busy1 - busy0 >= 0.15
    assert 0 < busy1 - busy0 <= total1 - total0
