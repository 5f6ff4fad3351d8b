"""The worker's model housekeeping hooks: after every prompt, and on POST /free."""
import asyncio

import pytest

from graph.queue import PromptStore
from server.app import build_app
from server.args import parse_args
from tests.server_fixtures import chain, env, wait_history  # noqa: F401  (env is a fixture)
from tests.server_nodes import make_executor, make_registry

pytestmark = pytest.mark.asyncio


async def test_after_prompt_and_free_hooks_are_called(env, aiohttp_client):  # noqa: F811
    calls = []
    registry = make_registry()
    app = build_app(parse_args([]), registry=registry, folder_paths=env, store=PromptStore(),
                    executor=make_executor(registry),
                    unload_models=lambda: calls.append("unload"),
                    after_prompt=lambda: calls.append("after"))
    client = await aiohttp_client(app)
    for value in (1, 2):
        r = await client.post("/prompt", json={"prompt": chain(value)})
        await wait_history(client, (await r.json())["prompt_id"])
    assert calls == ["after", "after"]
    await client.post("/free", json={"unload_models": True})
    for _ in range(100):
        if "unload" in calls:
            break
        await asyncio.sleep(0.02)
    assert calls == ["after", "after", "unload"]
