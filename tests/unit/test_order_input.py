"""The identifier grammar, and how the order service reads a product or a customer from another service."""

from types import SimpleNamespace

import httpx
import pytest
from fastapi import HTTPException
from pydantic import TypeAdapter, ValidationError

from services.common.identifiers import Identifier
from services.order.api import _lookup

IDENTIFIER = TypeAdapter(Identifier)


@pytest.mark.parametrize("value", [".", ".."])
def test_dot_segments_are_not_identifiers(value):
    with pytest.raises(ValidationError, match="HTTP rewrites"):
        IDENTIFIER.validate_python(value)


@pytest.mark.parametrize("value", ["...", ".a", "a.", "a..b", "sku-0001", "c@shop:1", "x" * 64])
def test_other_dotted_names_stay_identifiers(value):
    assert IDENTIFIER.validate_python(value) == value


@pytest.mark.parametrize("answer", [
    httpx.Response(200, json=[{"sku": "a"}]),
    httpx.Response(200, json={"sku": "a"}),
    httpx.Response(200, json="a string"),
    httpx.Response(200, content=b"<html>not json</html>"),
])
async def test_a_lookup_answer_that_is_not_the_expected_object_is_a_503(answer):
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _: answer)) as http:
        with pytest.raises(HTTPException) as err:
            await _lookup(SimpleNamespace(http=http), "http://inventory/products/a", ("sku", "name", "price_cents"))
    assert err.value.status_code == 503 and "not a JSON object" in err.value.detail


async def test_a_lookup_answers_the_fields_it_asks_for():
    answer = httpx.Response(200, json={"id": "c1", "name": "Ann", "balance_cents": 5})
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _: answer)) as http:
        assert await _lookup(SimpleNamespace(http=http), "http://payment/customers/c1", ("id", "name")) == {
            "id": "c1", "name": "Ann"}
