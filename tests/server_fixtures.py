"""Fixtures for server tests: an app with test nodes, a temporary base directory, a client."""
from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio

from graph.queue import PromptStore
from server.app import build_app
from server.args import parse_args
from server.state import ServerContext
from tests.server_nodes import FakeFolderPaths, SaveText, make_executor, make_registry


def make_app(folder_paths, argv=(), *, store=None, executor=None, web_root=None, **hooks):
    """The app with the test nodes, handed a ServerContext as main.py hands one: their registry,
    `folder_paths` and the housekeeping `hooks` given (unload_models, after_prompt)."""
    registry = make_registry()
    return build_app(parse_args(list(argv)), ServerContext(registry, folder_paths, **hooks),
                     store=store if store is not None else PromptStore(),
                     executor=executor if executor is not None else make_executor(registry),
                     web_root=web_root)


@pytest.fixture
def env(tmp_path):
    fp = FakeFolderPaths(tmp_path)
    SaveText.output_dir = fp.get_output_directory()
    return fp


@pytest_asyncio.fixture
async def make_client(env, aiohttp_client):
    """make_client(argv=(), store=None) -> aiohttp TestClient on a fresh app."""

    async def factory(argv=(), store=None, web_root=None):
        return await aiohttp_client(make_app(env, argv, store=store, web_root=web_root))

    return factory


@pytest_asyncio.fixture
async def client(make_client):
    return await make_client()


def chain(value=1, out="9", steps=0, delay=0.0, fail=False):
    """Number -> (Steps) -> Show prompt."""
    prompt = {"1": {"class_type": "Number", "inputs": {"value": value}}}
    src = ["1", 0]
    if steps:
        prompt["2"] = {"class_type": "Steps", "inputs": {"value": src, "steps": steps, "delay": delay}}
        src = ["2", 0]
    if fail:
        prompt["3"] = {"class_type": "Fail", "inputs": {"value": src}}
        src = ["3", 0]
    prompt[out] = {"class_type": "Show", "inputs": {"value": src}}
    return prompt


async def wait_history(client, prompt_id, timeout=10.0):
    for _ in range(int(timeout / 0.02)):
        r = await client.get(f"/history/{prompt_id}")
        data = await r.json()
        if data:
            return data[prompt_id]
        await asyncio.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout}s")


async def ws_messages_until_done(ws, prompt_id, timeout=10.0):
    """Collect (type, data) JSON messages and binary frames until executing(node=None) for prompt_id."""
    out = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type.name == "BINARY":
            out.append(("binary", msg.data))
            continue
        if msg.type.name != "TEXT":
            raise AssertionError(f"socket ended: {msg.type}")
        m = json.loads(msg.data)
        out.append((m["type"], m["data"]))
        if m["type"] == "executing" and m["data"].get("node") is None and m["data"].get("prompt_id") == prompt_id:
            return out
