"""The node's HTTP/1.1 server: keep-alive, in-order pipelined answers, size limits, malformed input."""

from __future__ import annotations

import asyncio

import httpx

from raft.cluster import free_base_port
from raft.http_server import HttpServer, Request, Response


async def handler(req: Request) -> Response:
    if req.path == "/slow":
        await asyncio.sleep(0.05)
    if req.path == "/boom":
        raise RuntimeError("a bug")
    return Response(200, b'{"path":"%s","n":%d}' % (req.path.encode(), len(req.body)))


async def serve():
    port = free_base_port(1)
    server = HttpServer(handler)
    await server.start("127.0.0.1", port)
    return server, port


async def test_keep_alive_connection_serves_many_requests():
    server, port = await serve()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(20):
                r = await client.put(f"/kv/{i}", content=b"x" * i)
                assert r.json() == {"path": f"/kv/{i}", "n": i}
    finally:
        await server.close()


async def test_pipelined_requests_are_answered_in_order():
    server, port = await serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            data += await asyncio.wait_for(reader.read(4096), 5)
        assert data.index(b"/slow") < data.index(b"/fast")
        writer.close()
    finally:
        await server.close()


async def test_oversized_body_gets_413_and_garbage_gets_400():
    server, port = await serve()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.put("/kv/big", content=b"x" * (1024 * 1024 + 1))
            assert r.status_code == 413
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data.startswith(b"HTTP/1.1 400")
        writer.close()
    finally:
        await server.close()


async def test_a_handler_bug_becomes_a_500_without_the_stack_trace():
    server, port = await serve()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/boom")
            assert r.status_code == 500 and r.json() == {"error": "internal error"}
            assert (await client.get("/after")).status_code == 200
    finally:
        await server.close()


async def test_a_deep_pipeline_is_answered_completely_and_in_order():
    server, port = await serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(b"GET /n%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(300)))
        await writer.drain()
        data = b""
        while data.count(b"HTTP/1.1 200") < 300:
            data += await asyncio.wait_for(reader.read(65536), 5)
        positions = [data.index(b'"/n%d"' % i) for i in range(300)]
        assert positions == sorted(positions)
        writer.close()
    finally:
        await server.close()
