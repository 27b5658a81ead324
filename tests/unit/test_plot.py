"""Every bench's `--plot` draws its table's rows, each figure where it belongs, without a server or a display."""

import json
import struct

import pytest

from bench import failover, hashring, outbox, raft
from bench.plot import save
from services.cli import BENCHES, _run_entry

PNG = b"\x89PNG\r\n\x1a\n"


def bars(ax) -> dict[str, list[float]]:
    """Each legend entry's bar heights, left to right; bars coloured by their x value are named by their tick."""
    out: dict[str, list[float]] = {}
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]  # long names are wrapped
    for container in ax.containers:
        heights = [round(p.get_height(), 6) for p in container.patches]
        if container.get_label() == "_nolegend_":
            out |= {tick: [h] for tick, h in zip(ticks, heights, strict=True)}
        else:
            out[container.get_label()] = heights
    return out


def legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def assert_png(fig, path) -> None:
    save(fig, path)
    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert data[:8] == PNG and len(data) > 10_000 and width >= 800 and height >= 400


def pattern_row(pattern: str, c: int) -> outbox.Row:
    return outbox.Row(pattern, c, 30.0 + c / 8, 35.0, 5000.0, 0.01, 80.0, 300.0, 200.0, 500.0 + c, 11.0, 2.0, 25.0,
                      1000, 0, 0, True)


@pytest.mark.parametrize("patterns", [["outbox"], ["outbox", "halfmsg"], ["tcc"], ["2pc", "3pc"],
                                      ["outbox", "halfmsg", "tcc", "2pc", "3pc"]])
def test_a_pattern_chart_has_orders_per_s_and_p99_of_each_pattern_at_each_concurrency(patterns, tmp_path):
    rows = [pattern_row(p, c) for c in (8, 32, 128) for p in patterns]
    fig = outbox.chart(rows, "title")
    top, bottom = fig.axes
    assert [t.get_text() for t in bottom.get_xticklabels()] == patterns
    assert bars(top) == {f"{c} in flight": [30.0 + c / 8] * len(patterns) for c in (8, 32, 128)}
    assert bars(bottom) == {f"{c} in flight": [500.0 + c] * len(patterns) for c in (8, 32, 128)}
    assert (top.get_ylabel(), bottom.get_ylabel()) == ("orders decided/s", "end-to-end p99 (ms)")
    assert_png(fig, tmp_path / "patterns.png")


RAFT = [{"system": s, "in_flight": n, "writes_per_s": rate * k, "p50_ms": n / rate * 1000, "p99_ms": n / rate * 3000,
         "errors": 0} for s, k in (("txlab-raft", 1.0), ("etcd", 0.5)) for n, rate in ((1, 1000.0), (64, 8000.0))]
KILLS = {"kills": 20, "p50_ms": 216.0, "p99_ms": 282.0, "max_ms": 290.0, "mean_ms": 208.0}


def test_the_raft_chart_sets_txlab_beside_etcd_at_each_level_and_draws_the_failover_times(tmp_path):
    fig = raft.chart(RAFT, KILLS)
    writes, p50, p99, kills = fig.axes
    for ax in (writes, p50, p99):
        assert legend(ax) == ["txlab-raft", "etcd"]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "64"]
        assert ax.get_xlabel() == "requests in flight"
    assert bars(writes) == {"txlab-raft": [1000.0, 8000.0], "etcd": [500.0, 4000.0]}
    assert bars(p50) == {"txlab-raft": [1.0, 8.0], "etcd": [1.0, 8.0]}
    assert bars(p99) == {"txlab-raft": [3.0, 24.0], "etcd": [3.0, 24.0]}
    assert (p50.get_yscale(), p99.get_yscale(), writes.get_yscale()) == ("log", "log", "linear")
    assert bars(kills) == {"p50": [216.0], "p99": [282.0], "max": [290.0]}
    assert "8.0k" in [t.get_text() for t in writes.texts], "each bar carries its figure"
    assert_png(fig, tmp_path / "raft.png")


def test_the_raft_chart_without_etcd_or_kills_draws_txlab_alone(tmp_path):
    fig = raft.chart([r for r in RAFT if r["system"] == "txlab-raft"], None)
    assert len(fig.axes) == 3
    assert bars(fig.axes[0]) == {"txlab-raft": [1000.0, 8000.0]}
    assert_png(fig, tmp_path / "raft.png")


def test_the_front_end_chart_has_requests_per_s_and_p50_of_each_front_end(tmp_path):
    rows = [{"front_end": name, "requests_per_s": 1000.0 * (i + 1), "p50_ms": 10.0 - i, "vs_fastapi": 1.0}
            for i, name in enumerate(raft.FRONTENDS)]
    rate, p50 = (fig := raft.frontends_chart(rows, "front ends")).axes
    assert bars(rate) == {"httptools-server": [1000.0], "uvicorn-bare-asgi": [2000.0], "fastapi-uvicorn": [3000.0]}
    assert bars(p50) == {"httptools-server": [10.0], "uvicorn-bare-asgi": [9.0], "fastapi-uvicorn": [8.0]}
    assert_png(fig, tmp_path / "frontends.png")


def test_the_failover_chart_has_p50_p99_and_max_of_each_measure(tmp_path):
    rows = [failover.measure("new leader elected and caught up", [0.2, 0.3, 0.4]),
            failover.measure("transactions progress again", [0.5, 0.6, 0.7]),
            failover.measure("order end-to-end (accepted → final)", [1.0, 2.0, 3.0])]
    (ax,) = (fig := failover.chart(rows, "failover")).axes
    assert legend(ax) == ["p50", "p99", "max"]
    assert bars(ax)["max"] == [400.0, 700.0, 3000.0] and bars(ax)["p50"] == [300.0, 600.0, 2000.0]
    assert len(ax.get_xticklabels()) == 3 and ax.get_yscale() == "log"
    assert_png(fig, tmp_path / "failover.png")


def test_the_hashring_chart_draws_every_table_ring_beside_uhashring(tmp_path):
    out = tmp_path / "rows.json"
    small = ["--keys", "4000", "--move-keys", "2000", "--sets", "2", "--repeat", "1", "--nodes", "50",
             "--race-seconds", "0.2", "--readers", "1"]
    assert hashring.main([*small, "--json", str(out), "--plot", str(tmp_path / "drawn.png")]) == 0
    rows = json.loads(out.read_text())
    assert (tmp_path / "drawn.png").read_bytes()[:8] == PNG
    lookups, balance, join, changes, race = (fig := hashring.chart(rows)).axes[:5]
    assert set(bars(lookups)) == {"uhashring", "Ring.node_for", "Ring.nodes_for (batched)", "md5 of each key only"}
    assert [t.get_text() for t in balance.get_xticklabels()] == ["40", "160", "1000"]
    assert legend(balance) == ["uhashring", "Ring", "Ring, mean of 2 name sets", "bounded eps=0.25", "bounded eps=0.05"]
    assert bars(balance)["Ring"] == [round(r["stddev_pct"], 6) for r in rows["balance"] if r["router"] == "Ring"]
    assert bars(join) == {r["router"]: [round(r["moved_pct"], 6)] for r in rows["join"]}
    assert legend(join) == ["ideal 1/11"] and join.lines[0].get_ydata()[0] == pytest.approx(100 / 11)
    assert legend(changes) == ["uhashring", "Ring"] and changes.get_yscale() == "log"
    assert bars(race) == {r["router"]: [float(r["errors"])] for r in rows["race"]} and bars(race)["Ring"] == [0.0]
    assert_png(fig, tmp_path / "hashring.png")


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_every_bench_offers_plot_and_json(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _run_entry(BENCHES[name], ["--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert "--plot" in usage and "--json" in usage


def test_log_axes_read_plain_figures_even_within_one_decade(tmp_path):
    rows = [failover.measure("elected", [0.2, 0.25]), failover.measure("resumed", [0.3, 0.57])]
    (ax,) = (fig := failover.chart(rows, "one decade")).axes
    assert_png(fig, tmp_path / "failover.png")  # drawing places and labels the ticks
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_text()]
    assert labels and all(label.replace(".", "").isdigit() for label in labels), labels
