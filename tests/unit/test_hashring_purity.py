"""The hash ring library is pure computation: it imports nothing that does I/O, time or threads."""

import ast
from pathlib import Path

import hashring

FORBIDDEN = {"asyncio", "socket", "os", "io", "pathlib", "threading", "subprocess", "time", "random",
             "redis", "httpx", "shutil", "tempfile", "logging"}


def test_hashring_modules_import_no_io_clock_or_thread_module() -> None:
    package = Path(hashring.__file__).parent
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN, f"{source.name} imports {roots & FORBIDDEN}"
