"""Compatibility regressions found in review (COMPAT section named in each test)."""
import pytest

from tests.server_fixtures import chain, client, env, make_client  # noqa: F401

pytestmark = pytest.mark.asyncio


async def test_explicit_number_does_not_advance_the_counter(client):
    # COMPAT §6: the counter advances on every POST that does not supply `number`.
    a = await (await client.post("/prompt", json={"prompt": chain(1)})).json()
    b = await (await client.post("/prompt", json={"prompt": chain(2), "number": 99})).json()
    c = await (await client.post("/prompt", json={"prompt": chain(3)})).json()
    assert b["number"] == 99
    assert c["number"] == a["number"] + 1


async def test_front_is_truthy_not_only_true(client):
    # COMPAT §6: `front` negates the counter whenever it is truthy (ComfyUI tests `if front:`).
    a = await (await client.post("/prompt", json={"prompt": chain(1)})).json()
    b = await (await client.post("/prompt", json={"prompt": chain(2), "front": 1})).json()
    c = await (await client.post("/prompt", json={"prompt": chain(3), "front": 0})).json()
    assert b["number"] == -(a["number"] + 1)
    assert c["number"] == a["number"] + 2
