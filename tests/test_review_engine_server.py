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


class _EmptyUi:
    """An output node whose UI dict is empty: ComfyUI sends no `executed` and files nothing."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value):
        return {"ui": {}}


def test_empty_ui_dict_sends_no_executed_and_no_history_output():
    # COMPAT §1.3 / §5.2: `executed` and history outputs only for a non-empty merged ui.
    from graph.executor import Executor
    from graph.validate import validate_prompt
    from tests import engine_nodes as N

    reg = N.Registry({**N.NODES, "EmptyUi": _EmptyUi})
    prompt = {"1": {"class_type": "IntConst", "inputs": {"value": 3}},
              "2": {"class_type": "EmptyUi", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Output", "inputs": {"value": ["1", 0]}}}
    checked = validate_prompt(prompt, reg)
    assert checked.ok, checked.node_errors
    events = []
    result = Executor(reg).execute(prompt, "pid", {}, checked.outputs,
                                   [lambda e, d: events.append((e, d))])
    assert result.status_str == "success"
    assert [d["node"] for e, d in events if e == "executed"] == ["3"]
    assert set(result.outputs) == {"3"}
