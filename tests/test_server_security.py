"""Regression tests, one per path-traversal / CSRF / rebinding form, plus auth token and bind rules."""
import os

import pytest

from server.args import ArgsError, parse_args
from tests.server_fixtures import client, env, make_client  # noqa: F401

pytestmark = pytest.mark.asyncio


@pytest.fixture
def secret(tmp_path):
    """A file outside every served root, and the roots holding symlinks to it."""
    outside = tmp_path / "secret.txt"
    outside.write_text("TOP SECRET")
    return outside


async def assert_refused(resp, statuses=(400, 403)):
    assert resp.status in statuses, resp.status
    body = await resp.text()
    assert "TOP SECRET" not in body and "Traceback" not in body


async def test_view_dotdot(client, secret):
    await assert_refused(await client.get("/view", params={"filename": "../secret.txt", "type": "output"}))
    await assert_refused(await client.get("/view", params={"filename": "secret.txt", "subfolder": ".."}))


async def test_view_encoded_dotdot(client, secret):
    await assert_refused(await client.get("/view?filename=%2E%2E%2Fsecret.txt"))
    await assert_refused(await client.get("/view?filename=secret.txt&subfolder=%2e%2e"))
    await assert_refused(await client.get("/view?filename=secret.txt&subfolder=..%2F..%2F"))


async def test_view_absolute(client, secret):
    await assert_refused(await client.get("/view", params={"filename": str(secret)}))
    await assert_refused(await client.get("/view", params={"filename": "secret.txt", "subfolder": str(secret.parent)}))


async def test_view_symlink_escape(client, env, secret):
    os.symlink(secret, os.path.join(env.get_output_directory(), "link.txt"))
    os.symlink(secret.parent, os.path.join(env.get_output_directory(), "linkdir"))
    await assert_refused(await client.get("/view", params={"filename": "link.txt"}))
    await assert_refused(await client.get("/view", params={"filename": "secret.txt", "subfolder": "linkdir"}))


async def test_upload_escapes(client, env, secret):
    import aiohttp

    for fields in ({"subfolder": "../.."}, {"subfolder": str(secret.parent)}):
        f = aiohttp.FormData()
        f.add_field("image", b"x", filename="evil.png")
        for k, v in fields.items():
            f.add_field(k, v)
        await assert_refused(await client.post("/upload/image", data=f))
    f = aiohttp.FormData()
    f.add_field("image", b"x", filename="..")
    await assert_refused(await client.post("/upload/image", data=f))
    assert not (secret.parent / "evil.png").exists()


async def test_userdata_escapes(client, env, secret):
    await assert_refused(await client.get("/userdata/..%2F..%2Fsecret.txt"))
    await assert_refused(await client.get("/userdata?dir=..%2F.."))
    await assert_refused(await client.post("/userdata/..%2F..%2Fpwn.txt", data=b"x"))
    assert not (secret.parent / "pwn.txt").exists()
    user_dir = os.path.join(env.get_user_directory(), "default")
    os.makedirs(user_dir, exist_ok=True)
    os.symlink(secret, os.path.join(user_dir, "s.json"))
    await assert_refused(await client.get("/userdata/s.json"))


async def test_origin_mismatch_is_403(client):
    r = await client.post("/prompt", json={}, headers={"Origin": "http://evil.example"})
    assert r.status == 403
    r = await client.get("/queue", headers={"Origin": f"http://127.0.0.1:{client.port + 1}"})
    assert r.status == 403
    r = await client.get("/queue", headers={"Origin": f"http://127.0.0.1:{client.port}"})
    assert r.status == 200


async def test_origin_null_is_403(client):
    r = await client.post("/interrupt", headers={"Origin": "null"})
    assert r.status == 403


async def test_sec_fetch_site_cross_site_is_403(client):
    r = await client.post("/free", json={}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status == 403


async def test_host_rebinding_is_403(client):
    r = await client.get("/queue", headers={"Host": "attacker.example:8188"})
    assert r.status == 403
    r = await client.get("/queue", headers={"Host": f"localhost:{client.port}"})
    assert r.status == 200


async def test_websocket_cross_origin_is_refused(client):
    import aiohttp

    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws", headers={"Origin": "http://evil.example"})


async def test_cors_flag_allows_cross_origin(make_client):
    client = await make_client(["--enable-cors-header"])
    r = await client.get("/queue", headers={"Origin": "http://elsewhere.example"})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    r = await client.options("/prompt", headers={"Origin": "http://elsewhere.example"})
    assert r.status == 200


async def test_auth_token_required_on_http_and_ws(make_client):
    import aiohttp

    client = await make_client(["--auth-token", "s3cret"])
    assert (await client.get("/queue")).status == 401
    assert (await client.get("/queue", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/queue", headers={"Authorization": "Bearer s3cret"})).status == 200
    assert (await client.get("/queue?token=s3cret")).status == 200
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws")
    ws = await client.ws_connect("/ws?token=s3cret&clientId=a")
    assert (await ws.receive_json())["type"] == "status"
    await ws.close()


async def test_open_bind_needs_token_or_explicit_opt_out():
    with pytest.raises(ArgsError, match="--auth-token"):
        parse_args(["--listen"])
    with pytest.raises(ArgsError):
        parse_args(["--listen", "192.168.1.5"])
    assert parse_args(["--listen", "0.0.0.0", "--auth-token", "t"]).loopback_only is False
    assert parse_args(["--listen", "0.0.0.0", "--i-know-this-is-open"]).hosts == ["0.0.0.0"]
    assert parse_args([]).hosts == ["127.0.0.1"]
