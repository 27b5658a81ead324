"""Which check_url the broker accepts: http(s) on a host of this installation, nothing else."""

import pytest

from broker.app import allowed_check_url
from services.common.settings import Settings

HOSTS = Settings(order_url="http://order:8001", broker_allowed_hosts="shop.internal").check_hosts()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8001/internal/halfmsg/check", "https://localhost/check", "http://[::1]:9/x",
    "http://order:8001/internal/halfmsg/check", "http://shop.internal/check", "http://LOCALHOST/check",
])
def test_allowed(url):
    assert allowed_check_url(url, HOSTS) is None


@pytest.mark.parametrize("url, why", [
    ("ftp://127.0.0.1/check", "http(s)"), ("file:///etc/passwd", "http(s)"), ("http:///nohost", "http(s)"),
    ("http://169.254.169.254/latest/meta-data", "not one of"), ("http://10.0.0.1/check", "not one of"),
    ("http://example.com@127.0.0.1/", "credentials"), ("http://127.0.0.1.nip.io/", "not one of"),
    ("http://user:pw@127.0.0.1/", "credentials"),
    ("http://127.0.0.1:99999/", "not a valid URL"), ("http://0x7f000001/", "not one of"),
])
def test_refused(url, why):
    reason = allowed_check_url(url, HOSTS)
    assert reason is not None and why in reason
