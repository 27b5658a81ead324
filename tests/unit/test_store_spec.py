"""`--store` on a command line: raft, or an etcd that answers; anything else is one line of error, not a traceback
from deep inside the run (a typo once printed a whole Rich traceback)."""

import argparse
import re
import socket

import pytest

from services.coordinator.store import store_spec


def test_raft_and_a_listening_etcd_pass():
    assert store_spec("raft") == "raft"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"etcd://127.0.0.1:{listener.getsockname()[1]}"
        assert store_spec(url) == url


@pytest.mark.parametrize("value, message", [
    ("bogus", "use raft or etcd://host:port, not 'bogus'"),
    ("etcd://", "use raft or etcd://host:port"),
    ("etcd://127.0.0.1:99999", "use raft or etcd://host:port"),
    ("etcd://127.0.0.1:2379/x", "use raft or etcd://host:port"),
    ("http://127.0.0.1:2379", "use raft or etcd://host:port"),
])
def test_a_malformed_store_is_refused_in_one_line(value, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        store_spec(value)


def test_an_etcd_that_does_not_answer_is_named():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: a connection is refused
        with pytest.raises(argparse.ArgumentTypeError, match=f"no etcd answers at 127.0.0.1:{port}"):
            store_spec(f"etcd://127.0.0.1:{port}")
