"""The layers import downwards only: business rules do no I/O, the shared code knows no service, and no
migration imports application code."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO = {"sqlalchemy", "asyncpg", "psycopg", "aio_pika", "aiormq", "httpx", "redis", "fastapi", "asyncio", "socket"}


def imports(source: Path) -> set[str]:
    """Every module `source` imports, as dotted names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("domain", ["services/order/domain.py", "services/inventory/domain.py",
                                    "services/payment/domain.py", "services/coordinator/model.py"])
def test_business_rules_do_no_io(domain):
    used = {name.split(".")[0] for name in imports(ROOT / domain)}
    assert not used & IO, f"{domain} imports {used & IO}"


@pytest.mark.parametrize("package, may_not", [
    ("services/common", ("services.cache", "services.messaging", "services.runtime", "services.order",
                         "services.inventory", "services.payment", "services.admin")),
    ("services/cache", ("services.messaging", "services.runtime", "services.order", "services.inventory",
                        "services.payment", "services.admin")),
    ("services/messaging", ("services.cache", "services.runtime", "services.order", "services.inventory",
                            "services.payment", "services.admin")),
    ("migrations", ("services", "raft", "hashring")),
])
def test_a_package_imports_nothing_above_it(package, may_not):
    for source in sources(package):
        wrong = {name for name in imports(source) if name.startswith(may_not)}
        assert not wrong, f"{source.relative_to(ROOT)} imports {sorted(wrong)}"
