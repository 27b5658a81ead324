"""`txlab raft ...`: run one KV node or a local cluster, look at a cluster's status, and use the admin routes.

The nodes and these commands use the installation's admin token (`raft.cluster.admin_token`: the one the
txlab services use), so the admin routes are never open and the commands need no token argument."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time

import httpx
import typer
from rich.console import Console
from rich.table import Table

from raft.cluster import LocalCluster, admin_token, taken_ports
from raft.types import CONF_CHANGE_OPS

app = typer.Typer(help="Replicated KV store on Raft: run nodes and clusters.", no_args_is_help=True,
                  add_completion=False)
console = Console() if sys.stdout.isatty() else Console(width=150)  # piped: the tables whole, as txlab's


def _default_data_dir() -> str:
    return os.path.join(os.environ.get("TXLAB_DATA_DIR", "./.txlab"), "raft")


async def _serve(cfg, token: str) -> None:
    from raft.api import KVApi
    from raft.http_server import HttpServer
    from raft.node import RaftNode

    node = RaftNode(cfg)
    await node.start()
    http = HttpServer(KVApi(node, token))
    await http.start(cfg.host, cfg.http_port(cfg.id))
    logging.getLogger("raft").info("node %d: http %s, raft port %d, recovered %d log entries", cfg.id,
                                   cfg.http_url(cfg.id), cfg.raft_port(cfg.id), node.recovered_entries)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await http.close()
    await node.stop()


@app.command()
def node(
    id: int = typer.Option(..., "--id", help="this node's id, 1..N"),
    nodes: int = typer.Option(3, help="cluster size N"),
    base_port: int = typer.Option(7200, help="HTTP on base+id-1, Raft on base+100+id-1"),
    data_dir: str = typer.Option(None, help="files go under DIR/node-ID [default: $TXLAB_DATA_DIR/raft]"),
    quorum: str = typer.Option("majority", help="commit quorum: majority (Raft) or all (master-slave)"),
    election_tick: int = typer.Option(15, help="election timeout in 10 ms ticks, randomised in [T, 2T)"),
    snapshot_every: int = typer.Option(20_000, help="applied entries between snapshots"),
    check_quorum: bool = typer.Option(True, help="a leader that stops hearing a majority steps down"),
    pre_vote: bool = typer.Option(True, help="ask for pre-votes before disrupting a term (Raft thesis 9.6)"),
    join: bool = typer.Option(False, help="a new node (id > N): wait to be added with POST /raft/members"),
) -> None:
    """Run one node in the foreground (this is what `up` starts, and how a killed node is restarted)."""
    from raft.node import NodeConfig

    if not (1 <= id <= nodes or (join and id > nodes)):
        raise typer.BadParameter(f"--id must be in 1..{nodes}, or above {nodes} with --join")
    if quorum not in ("majority", "all"):
        raise typer.BadParameter("--quorum must be majority or all")
    cfg = NodeConfig(id=id, nodes=nodes, base_port=base_port, data_dir=data_dir or _default_data_dir(),
                     commit_quorum=quorum, election_tick=election_tick, snapshot_every=snapshot_every,
                     check_quorum=check_quorum, pre_vote=pre_vote)
    taken = taken_ports([cfg.http_port(id), cfg.raft_port(id)])
    if taken:  # checked before the node opens its files: another node may be writing them
        console.print(f"[red]node {id}'s port {taken[0]} is already in use[/red] (is node {id} running already?)")
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    gc.freeze()  # start-up objects never need collecting
    gc.set_threshold(50_000, 20, 20)  # fewer young-generation passes: they are pauses on the commit path
    asyncio.run(_serve(cfg, admin_token()))


@app.command()
def up(
    nodes: int = typer.Option(3, help="cluster size"),
    base_port: int = typer.Option(7200),
    data_dir: str = typer.Option(None, help="[default: $TXLAB_DATA_DIR/raft]"),
    quorum: str = typer.Option("majority", help="majority or all"),
) -> None:
    """Start a local cluster of N node processes and restart any that exits, unless the dashboard's kill holds
    it down (DATA_DIR/run/node-I.held); Ctrl-C stops them."""
    cluster = LocalCluster(nodes, data_dir or _default_data_dir(), base_port, quorum, supervised=True)
    taken = cluster.ports_in_use()
    if taken:  # another cluster runs there: starting over it would only crash-loop on its ports and its files
        console.print(f"[red]ports {', '.join(map(str, taken))} are already in use[/red] (is another `txlab raft "
                      "up` running? stop it, or choose --base-port)")
        raise typer.Exit(2)
    cluster.forget_control_files()  # no hold of an earlier run keeps a node down
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM stops the nodes too, as Ctrl-C does
    signal.signal(signal.SIGINT, signal.default_int_handler)  # and a SIGINT even when started where it was ignored
    # (a shell script's background job)
    try:
        cluster.start()
        leader = cluster.wait_leader()
        for i in range(1, nodes + 1):
            mark = "  (leader)" if i == leader else ""
            console.print(f"node {i}: {cluster.http_url(i)}{mark}")
        console.print(f"try: curl -XPUT {cluster.http_url(leader)}/kv/hello -d '{{\"value\": 1}}'")
        console.print(f"admin token: {cluster.admin_token}")
        while True:
            for news in cluster.restart_exited():
                console.print(news)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


@app.command()
def status(
    nodes: int = typer.Option(3, help="cluster size"),
    base_port: int = typer.Option(7200),
) -> None:
    """Show each node's role, term, leader, commit and applied index."""
    table = Table(title="raft cluster")
    for col in ("node", "http", "role", "member", "term", "leader", "commit", "applied", "last index"):
        table.add_column(col, no_wrap=True)
    for i in range(1, nodes + 1):
        url = f"http://127.0.0.1:{base_port + i - 1}"
        port = f":{base_port + i - 1}"
        try:
            st = httpx.get(url + "/raft/status", timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            table.add_row(str(i), port, "[red]down[/red]", "", "", "", "", "", "")
            continue
        member = "voter" if i in st["voters"] else "learner" if i in st.get("learners", ()) else "-"
        table.add_row(str(i), port, st["role"], member, str(st["term"]), str(st["leader"] or "-"),
                      str(st["commit"]), str(st["applied"]), str(st["last_index"]))
    console.print(table)


def _admin_request(base_port: int, node: int, method: str, path: str, body: dict | None = None) -> httpx.Response:
    """Call an admin route on `node` with the admin token (a follower redirects what only the leader does);
    exits with status 1 when no node answers."""
    url = f"http://127.0.0.1:{base_port + node - 1}{path}"
    auth = {"Authorization": f"Bearer {admin_token()}"}
    try:
        r = httpx.request(method, url, json=body, headers=auth, timeout=15.0)
        if r.status_code == 307:  # to the leader, by hand: httpx drops the token on a redirect to another port
            url = r.headers["location"]
            r = httpx.request(method, url, json=body, headers=auth, timeout=15.0)
    except httpx.HTTPError as exc:
        console.print(f"[red]{method} {url}: {exc!r}[/red]")
        raise typer.Exit(1) from exc
    return r


def _admin(base_port: int, node: int, method: str, path: str, body: dict | None = None) -> dict:
    """`_admin_request`, exiting with status 1 and the node's answer unless it is a 200."""
    r = _admin_request(base_port, node, method, path, body)
    if r.status_code != 200:
        console.print(f"[red]{method} {r.request.url}: {r.status_code}[/red] {r.text}")
        raise typer.Exit(1)
    return r.json()


@app.command()
def partition(
    node: int = typer.Argument(..., help="the node that drops the traffic"),
    block: list[int] = typer.Option(..., "--block", help="a node to cut off (repeat for several)"),
    base_port: int = typer.Option(7200),
) -> None:
    """Make NODE drop all traffic to and from the --block nodes."""
    console.print(_admin(base_port, node, "POST", "/raft/partition", {"block": block}))


@app.command()
def heal(
    node: int = typer.Argument(..., help="the node that stops dropping traffic"),
    base_port: int = typer.Option(7200),
) -> None:
    """Undo `partition` at NODE."""
    console.print(_admin(base_port, node, "DELETE", "/raft/partition"))


@app.command()
def campaign(
    node: int = typer.Argument(..., help="the node that campaigns"),
    base_port: int = typer.Option(7200),
) -> None:
    """Make NODE start an election now."""
    console.print(_admin(base_port, node, "POST", "/raft/campaign"))


@app.command("transfer-leader")
def transfer_leader(
    to: int = typer.Argument(..., help="the node to hand leadership to"),
    via: int = typer.Option(1, help="the node asked first; a follower redirects to the leader"),
    base_port: int = typer.Option(7200),
) -> None:
    """Make the leader hand leadership over to TO."""
    console.print(_admin(base_port, via, "POST", "/raft/transfer-leader", {"to": to}))


@app.command()
def members(
    op: str = typer.Argument(..., help="add-learner, promote, remove or add (a voter at once)"),
    node: int = typer.Argument(..., help="the node added, promoted or removed"),
    via: int = typer.Option(1, help="the node asked first; a follower redirects to the leader"),
    base_port: int = typer.Option(7200),
) -> None:
    """Change the membership by one node; prints the voters and learners once the change committed."""
    if op not in CONF_CHANGE_OPS:
        raise typer.BadParameter(f"OP must be one of {', '.join(CONF_CHANGE_OPS)}")
    _change_membership(op, node, via, base_port)


_DONE = {"add": "node {n} is a voter", "add-learner": "node {n} joined as a learner: it receives the log but "
         "does not vote; promote it once it caught up", "promote": "node {n} was promoted to voter",
         "remove": "node {n} was removed"}


def _change_membership(op: str, node: int, via: int, base_port: int) -> None:
    r = _admin_request(base_port, via, "POST", "/raft/members", {"op": op, "node": node})
    try:
        answer = r.json()
    except ValueError:
        answer = {"error": r.text}
    if r.status_code != 200:
        console.print(f"[red]{op} {node} refused ({r.status_code}):[/red] {answer.get('error', answer)}")
        raise typer.Exit(1)
    console.print(_DONE[op].format(n=node))
    console.print(f"voters: {answer['voters']}  learners: {answer.get('learners', [])}")


@app.command("add-learner")
def add_learner(
    node: int = typer.Argument(..., help="the new node (started with --join)"),
    via: int = typer.Option(1, help="the node asked first; a follower redirects to the leader"),
    base_port: int = typer.Option(7200),
) -> None:
    """Add NODE as a learner: it catches up without counting toward any quorum (then `promote` it)."""
    _change_membership("add-learner", node, via, base_port)


@app.command()
def promote(
    node: int = typer.Argument(..., help="the learner to make a voter"),
    via: int = typer.Option(1, help="the node asked first; a follower redirects to the leader"),
    base_port: int = typer.Option(7200),
) -> None:
    """Make learner NODE a voter; refused while it lags behind the leader's commit index."""
    _change_membership("promote", node, via, base_port)


@app.command()
def remove(
    node: int = typer.Argument(..., help="the voter or learner to remove"),
    via: int = typer.Option(1, help="the node asked first; a follower redirects to the leader"),
    base_port: int = typer.Option(7200),
) -> None:
    """Remove voter or learner NODE from the cluster."""
    _change_membership("remove", node, via, base_port)


if __name__ == "__main__":
    app()
