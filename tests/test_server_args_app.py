"""Options parsing, serve_main refusals, UI-format prompts, and one log line per rejected request."""
import logging

import pytest

from server.app import serve_main
from server.args import parse_args
from tests.server_fixtures import client, env, make_client, wait_history  # noqa: F401
from wiring import configure_folders, server_setup


def test_cache_flags_map_to_policies():
    assert parse_args([]).cache_policy == {"policy": "classic"}
    assert parse_args(["--cache-lru", "7"]).cache_policy == {"policy": "lru", "lru_size": 7}
    assert parse_args(["--cache-ram"]).cache_policy == {"policy": "ram", "ram_bytes": 4 * 2**30}
    assert parse_args(["--cache-ram", "0.5"]).cache_policy == {"policy": "ram", "ram_bytes": 2**29}
    assert parse_args(["--cache-none"]).cache_policy == {"policy": "none"}
    with pytest.raises(SystemExit):
        parse_args(["--cache-none", "--cache-lru", "3"])


def test_directory_and_misc_flags(tmp_path):
    opts = parse_args(["--port", "9000", "--max-upload-size", "2", "--extra-model-paths-config", "a.yaml",
                       "--extra-model-paths-config", "b.yaml", "c.yaml", "--preview-method", "latent2rgb",
                       "--enable-cors-header", "http://x.example", "--disable-metadata"])
    assert opts.port == 9000 and opts.max_upload_bytes == 2 * 1024 * 1024
    assert opts.extra_model_paths_config == ["a.yaml", "b.yaml", "c.yaml"]
    assert opts.preview_method == "latent2rgb" and opts.enable_cors_header == "http://x.example"
    assert opts.disable_metadata is True


def test_serve_main_refuses_open_bind_and_bad_front_end_root(capsys, tmp_path):
    assert serve_main(["--listen", "0.0.0.0"], server_setup) == 2
    assert "--auth-token" in capsys.readouterr().err
    assert serve_main(["--front-end-root", str(tmp_path / "missing"), "--base-directory", str(tmp_path)],
                      server_setup) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_ui_format_prompt_is_converted_on_the_server(client):
    ui = {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
          "nodes": [{"id": 1, "type": "Number", "mode": 0, "inputs": [],
                     "outputs": [{"name": "INT", "type": "INT", "links": [1], "slot_index": 0}],
                     "widgets_values": [12]},
                    {"id": 2, "type": "Show", "mode": 0,
                     "inputs": [{"name": "value", "type": "INT", "link": 1}], "outputs": [], "widgets_values": []}],
          "links": [[1, 1, 0, 2, 0, "INT"]]}
    r = await client.post("/prompt", json={"prompt": ui})
    assert r.status == 200, await r.text()
    entry = await wait_history(client, (await r.json())["prompt_id"])
    assert entry["outputs"] == {"2": {"value": [12]}}
    node = entry["prompt"][2]["1"]
    assert node["class_type"] == "Number" and node["inputs"] == {"value": 12}


@pytest.mark.asyncio
async def test_each_rejected_request_is_logged_once(client, caplog):
    caplog.set_level(logging.WARNING, logger="latentgraph.server")
    await client.post("/prompt", data=b"{oops")
    await client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    await client.get("/queue", headers={"Origin": "null"})
    rejected = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected")]
    assert len(rejected) == 3
    assert "not valid JSON" in rejected[0] and "invalid_prompt" in rejected[1] and "Origin" in rejected[2]


class RecordingFolderPaths:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a, **kw: self.calls.append((name, a, kw))


def test_configure_folders_applies_flags_then_yaml(tmp_path):
    yaml_file = tmp_path / "extra.yaml"
    yaml_file.write_text("s:\n  base_path: /m\n  loras: l\n")
    fp = RecordingFolderPaths()
    configure_folders(parse_args(["--base-directory", str(tmp_path), "--output-directory", "/o",
                                  "--temp-directory", "/t", "--extra-model-paths-config", str(yaml_file)]), fp)
    assert fp.calls == [("set_base_path", (str(tmp_path),), {}),
                        ("set_output_directory", ("/o",), {}),
                        ("set_temp_directory", ("/t/temp",), {}),
                        ("add_model_folder_path", ("loras", "/m/l"), {"is_default": False}),
                        ("add_output_model_paths", (), {})]
