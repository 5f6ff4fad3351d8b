"""The worker's model housekeeping hooks: after every prompt, and on POST /free."""
import asyncio

import pytest

from tests.server_fixtures import chain, env, make_app, wait_history  # noqa: F401  (env is a fixture)

pytestmark = pytest.mark.asyncio


async def test_after_prompt_and_free_hooks_are_called(env, aiohttp_client):  # noqa: F811
    calls = []
    app = make_app(env, unload_models=lambda: calls.append("unload"),
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


class RecordingExecutor:
    """Stands in for the engine: records the extra_data each prompt runs with."""

    def __init__(self):
        self.seen = []

    def execute(self, prompt, prompt_id, extra_data, outputs, listeners=()):
        import types
        self.seen.append(dict(extra_data))
        return types.SimpleNamespace(status_str="success", completed=True, outputs={},
                                     messages=[], meta={})

    def interrupt(self):
        pass


async def test_preview_method_default_means_the_server_flag(env, aiohttp_client):  # noqa: F811
    executor = RecordingExecutor()
    app = make_app(env, ["--preview-method", "latent2rgb"], executor=executor)
    client = await aiohttp_client(app)
    for extra in ({}, {"preview_method": "default"}, {"preview_method": "taesd"}):
        r = await client.post("/prompt", json={"prompt": chain(1), "extra_data": extra})
        await wait_history(client, (await r.json())["prompt_id"])
    assert [e["preview_method"] for e in executor.seen] == ["latent2rgb", "latent2rgb", "taesd"]


async def test_out_of_memory_unloads_models(env, aiohttp_client):  # noqa: F811
    import types

    calls = []

    class OOMExecutor(RecordingExecutor):
        def execute(self, prompt, prompt_id, extra_data, outputs, listeners=()):
            error = {"prompt_id": prompt_id, "exception_type": "torch.OutOfMemoryError"}
            return types.SimpleNamespace(status_str="error", completed=False, outputs={},
                                         messages=[["execution_error", error]], meta={})

    app = make_app(env, executor=OOMExecutor(), unload_models=lambda: calls.append("unload"))
    client = await aiohttp_client(app)
    r = await client.post("/prompt", json={"prompt": chain(1)})
    await wait_history(client, (await r.json())["prompt_id"])
    assert calls == ["unload"]
