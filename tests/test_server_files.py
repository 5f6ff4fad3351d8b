"""File routes: /view, uploads, model listings, /internal/*, safetensors metadata."""
import io
import json
import os
import struct

import aiohttp
import pytest
from PIL import Image, PngImagePlugin

from tests.server_fixtures import client, env, make_client  # noqa: F401

pytestmark = pytest.mark.asyncio


def png_bytes(color=(10, 20, 30, 255), size=(8, 6), text=None):
    img = Image.new("RGBA", size, color)
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def form(data, name="a.png", **fields):
    f = aiohttp.FormData()
    f.add_field("image", data, filename=name, content_type="image/png")
    for k, v in fields.items():
        f.add_field(k, v)
    return f


async def test_upload_then_view_roundtrip_and_dedupe(client, env):
    r = await client.post("/upload/image", data=form(png_bytes()))
    assert await r.json() == {"name": "a.png", "subfolder": "", "type": "input"}
    # Same bytes again: the existing file is reused.
    r = await client.post("/upload/image", data=form(png_bytes()))
    assert (await r.json())["name"] == "a.png"
    # Different bytes: renamed.
    r = await client.post("/upload/image", data=form(png_bytes((1, 2, 3, 255))))
    assert (await r.json())["name"] == "a (1).png"
    # overwrite keeps the name
    r = await client.post("/upload/image", data=form(png_bytes((9, 9, 9, 255)), overwrite="true"))
    assert (await r.json())["name"] == "a.png"
    r = await client.get("/view", params={"filename": "a.png", "type": "input"})
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert await r.read() == png_bytes((9, 9, 9, 255))
    r = await client.post("/upload/image", data=form(png_bytes(), subfolder="sub", type="temp"))
    assert await r.json() == {"name": "a.png", "subfolder": "sub", "type": "temp"}
    assert os.path.isfile(os.path.join(env.get_temp_directory(), "sub", "a.png"))
    r = await client.get("/view", params={"filename": "a.png [temp]", "subfolder": "sub"})
    assert r.status == 200


async def test_upload_bad_type_missing_file_and_size_limit(make_client):
    client = await make_client(["--max-upload-size", "0.01"])  # ~10 KB
    r = await client.post("/upload/image", data=form(png_bytes(), type="models"))
    assert r.status == 400 and "type must be one of" in (await r.json())["error"]
    f = aiohttp.FormData()
    f.add_field("other", "x")
    r = await client.post("/upload/image", data=f)
    assert r.status == 400
    r = await client.post("/upload/image", data=form(os.urandom(20_000), name="big.png"))
    assert r.status == 413 and "error" in await r.json()


async def test_view_channels_and_preview(client, env):
    Image.new("RGBA", (4, 4), (255, 0, 0, 77)).save(os.path.join(env.get_output_directory(), "o.png"))
    r = await client.get("/view", params={"filename": "o.png", "channel": "rgb"})
    img = Image.open(io.BytesIO(await r.read()))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0)
    r = await client.get("/view", params={"filename": "o.png", "channel": "a"})
    img = Image.open(io.BytesIO(await r.read()))
    assert img.getpixel((0, 0))[3] == 77
    r = await client.get("/view", params={"filename": "o.png", "preview": "webp;50"})
    assert r.headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(await r.read())).format == "WEBP"
    # as ComfyUI: an unknown preview format becomes webp, a non-numeric quality 90, an unknown
    # channel serves the file unchanged
    r = await client.get("/view", params={"filename": "o.png", "preview": "gif;x"})
    assert r.status == 200 and r.headers["Content-Type"] == "image/webp"
    r = await client.get("/view", params={"filename": "o.png", "preview": "jpeg;80", "channel": "rgba"})
    assert r.headers["Content-Type"] == "image/webp"  # alpha wanted: jpeg cannot carry it
    r = await client.get("/view", params={"filename": "o.png", "preview": "jpeg;80"})
    assert r.headers["Content-Type"] == "image/jpeg"
    r = await client.get("/view", params={"filename": "o.png", "channel": "xyz"})
    assert r.status == 200 and await r.read() == open(os.path.join(env.get_output_directory(), "o.png"), "rb").read()
    assert (await client.get("/view", params={"filename": "none.png"})).status == 404


async def test_view_serves_active_content_as_download(client, env):
    with open(os.path.join(env.get_output_directory(), "x.html"), "w") as f:
        f.write("<script>alert(1)</script>")
    r = await client.get("/view", params={"filename": "x.html"})
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_upload_mask_applies_alpha_and_keeps_text(client, env):
    original = png_bytes((100, 150, 200, 255), size=(6, 4), text={"prompt": "{}"})
    with open(os.path.join(env.get_input_directory(), "orig.png"), "wb") as f:
        f.write(original)
    mask = png_bytes((0, 0, 0, 40), size=(6, 4))
    r = await client.post("/upload/mask", data=form(mask, name="clipspace-mask.png",
                                                    original_ref=json.dumps({"filename": "orig.png"})))
    assert r.status == 404  # without a type the original is looked for in output/, as ComfyUI does
    r = await client.post("/upload/mask", data=form(mask, name="clipspace-mask.png", original_ref=json.dumps(
        {"filename": "orig.png", "type": "input"})))
    assert r.status == 200
    name = (await r.json())["name"]
    out = Image.open(os.path.join(env.get_input_directory(), name))
    assert out.getpixel((0, 0)) == (100, 150, 200, 40) and out.text.get("prompt") == "{}"
    r = await client.post("/upload/mask", data=form(mask, original_ref="{bad"))
    assert r.status == 400
    r = await client.post("/upload/mask", data=form(mask, original_ref=json.dumps(
        {"filename": "nope.png", "type": "input"})))
    assert r.status == 404


async def test_models_embeddings_and_internal(client, env):
    ckpt_dir = env.get_folder_paths("checkpoints")[0]
    os.makedirs(os.path.join(ckpt_dir, "sd"), exist_ok=True)
    header = json.dumps({"__metadata__": {"format": "pt", "title": "tiny"}}).encode()
    with open(os.path.join(ckpt_dir, "sd", "m.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
    open(os.path.join(env.get_folder_paths("embeddings")[0], "neg.pt"), "wb").close()
    assert await (await client.get("/models")).json() == ["checkpoints", "embeddings"]
    assert await (await client.get("/models/checkpoints")).json() == [os.path.join("sd", "m.safetensors")]
    assert (await client.get("/models/unet")).status == 404
    assert await (await client.get("/embeddings")).json() == ["neg"]
    r = await client.get("/view_metadata/checkpoints", params={"filename": "sd/m.safetensors"})
    assert await r.json() == {"format": "pt", "title": "tiny"}
    r = await client.get("/view_metadata/checkpoints", params={"filename": "missing.safetensors"})
    assert r.status == 404
    paths = await (await client.get("/internal/folder_paths")).json()
    assert paths["checkpoints"] == [ckpt_dir]
    assert (await client.get("/api/internal/folder_paths")).status == 404  # not aliased
    for i, name in enumerate(["old.png", "new.png"]):
        p = os.path.join(env.get_output_directory(), name)
        open(p, "w").close()
        os.utime(p, (1000 + i, 1000 + i))
    open(os.path.join(env.get_output_directory(), ".hidden"), "w").close()
    assert await (await client.get("/internal/files/output")).json() == ["new.png", "old.png"]
    assert (await client.get("/internal/files/models")).status == 400
