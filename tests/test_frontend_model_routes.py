"""/experiment/models: the model library listing the official frontend requests at boot (COMPAT §4)."""
import os

import pytest

from tests.server_fixtures import client, env, make_client  # noqa: F401

pytestmark = pytest.mark.asyncio


def touch(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


async def test_folders_list_model_keys_with_paths_but_not_configs(client, env):
    configs = os.path.join(env.base, "models", "configs")
    env.folder_names_and_paths["configs"] = ([configs], {".yaml"})
    for prefix in ("", "/api"):
        r = await client.get(prefix + "/experiment/models")
        assert r.status == 200
        assert await r.json() == [
            {"name": "checkpoints", "folders": env.folder_names_and_paths["checkpoints"][0]},
            {"name": "embeddings", "folders": env.folder_names_and_paths["embeddings"][0]},
        ]
    assert (await client.get("/api/experiment/models/configs")).status == 404
    assert (await client.get("/api/experiment/models/nonsense")).status == 404


async def test_folder_files_carry_path_index_size_and_times(client, env):
    first = env.folder_names_and_paths["checkpoints"][0][0]
    second = os.path.join(env.base, "more_checkpoints")
    env.folder_names_and_paths["checkpoints"][0].append(second)
    touch(os.path.join(first, "sd", "a.safetensors"), b"12345")
    touch(os.path.join(first, "notes.txt"))  # not a checkpoint extension
    touch(os.path.join(second, "b.ckpt"), b"123")
    touch(os.path.join(second, "sd", "a.safetensors"), b"1")  # same name in the second root
    r = await client.get("/api/experiment/models/checkpoints")
    assert r.status == 200
    got = await r.json()
    rows = sorted((e["name"], e["pathIndex"], e["size"]) for e in got)
    assert rows == [("b.ckpt", 1, 3), ("sd/a.safetensors", 0, 5), ("sd/a.safetensors", 1, 1)]
    stat = os.stat(os.path.join(second, "b.ckpt"))
    entry = next(e for e in got if e["name"] == "b.ckpt")
    assert entry["modified"] == pytest.approx(stat.st_mtime)
    assert entry["created"] == pytest.approx(stat.st_ctime)
