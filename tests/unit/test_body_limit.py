"""BodyLimit answers 413 for a body over its limit, whether it says its length or comes in chunks (a chunked one
once reached FastAPI's body parser mid-way, which answered 400)."""

from typing import Any

import httpx
from fastapi import FastAPI

from services.runtime.http_errors import BodyLimit

app = FastAPI()


@app.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return body


def chunks(data: bytes, size: int = 100):
    async def stream():
        for i in range(0, len(data), size):
            yield data[i:i + size]
    return stream()


async def test_a_body_over_the_limit_is_413_whether_chunked_or_not():
    limited = BodyLimit(app, max_bytes=1_000)
    big = b'{"x": "' + b"a" * 5_000 + b'"}'
    async with httpx.AsyncClient(transport=httpx.ASGITransport(limited), base_url="http://test") as client:
        said = await client.post("/echo", content=big)
        chunked = await client.post("/echo", content=chunks(big))
        small = await client.post("/echo", content=chunks(b'{"x": "fits"}', size=3),
                                  headers={"content-type": "application/json"})
    assert "content-length" not in chunked.request.headers
    assert (said.status_code, chunked.status_code) == (413, 413), chunked.text
    assert "larger than 1000 bytes" in chunked.json()["detail"]
    assert small.status_code == 200 and small.json() == {"x": "fits"}
