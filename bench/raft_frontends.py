"""Three HTTP front ends answering the KV write route with a fixed body, to measure the framework's own
cost per request (no Raft behind): the node's httptools server, a bare ASGI app on uvicorn, and FastAPI
with a pydantic body on uvicorn. Run one with `python -m bench.raft_frontends NAME PORT`;
`txlab bench raft --frontends` drives all three with the benchmark's client and prints the table.
"""

import asyncio
import sys

BODY = b'{"key":"k","value":"v"}'
FRONTENDS = ("httptools-server", "uvicorn-bare-asgi", "fastapi-uvicorn")


def _own(port: int) -> None:
    import uvloop

    from raft.http_server import HttpServer, Request, Response

    async def handler(req: Request) -> Response:
        return Response(200, BODY)

    async def serve() -> None:
        server = HttpServer(handler)
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(serve())


def _bare_asgi(port: int) -> None:
    import uvicorn

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": BODY})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False, loop="uvloop",
                http="httptools")


def _fastapi(port: int) -> None:
    from typing import Any

    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    app = FastAPI()

    class Put(BaseModel):
        value: Any

    @app.put("/kv/{key}")
    async def put(key: str, body: Put) -> dict:
        return {"key": key, "value": body.value}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False, loop="uvloop",
                http="httptools")


if __name__ == "__main__":
    name, port = sys.argv[1], int(sys.argv[2])
    {"httptools-server": _own, "uvicorn-bare-asgi": _bare_asgi, "fastapi-uvicorn": _fastapi}[name](port)
