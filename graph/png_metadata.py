"""Read the prompt and workflow that image files carry (COMPAT §2.3).

PNG files keep them in text chunks (`tEXt`, `zTXt`, `iTXt`) under the keys `prompt` and `workflow`;
animated PNGs written by SaveAnimatedPNG use private `comf` chunks holding `key\\0json`. The chunks are
parsed by hand so that the engine needs no imaging library and a damaged file gets a precise error.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Union

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Text chunk sizes are bounded so that a hostile file cannot make us inflate gigabytes.
MAX_TEXT_BYTES = 64 * 1024 * 1024


class ImageMetadataError(ValueError):
    """The file is not a readable PNG, or its embedded workflow is not valid JSON."""


def _iter_chunks(data: bytes, name: str):
    if not data.startswith(PNG_SIGNATURE):
        raise ImageMetadataError(f"{name}: not a PNG file (bad signature)")
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ImageMetadataError(f"{name}: truncated PNG (chunk header at byte {pos})")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length + 4
        if end > len(data):
            raise ImageMetadataError(
                f"{name}: truncated PNG ({ctype.decode('latin-1')} chunk at byte {pos} "
                f"needs {length} bytes)")
        yield ctype, data[pos + 8:pos + 8 + length]
        if ctype == b"IEND":
            return
        pos = end


def _inflate(payload: bytes, name: str) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, MAX_TEXT_BYTES)
    except zlib.error as e:
        raise ImageMetadataError(f"{name}: corrupt compressed text chunk ({e})") from None
    if d.unconsumed_tail:
        raise ImageMetadataError(f"{name}: compressed text chunk larger than {MAX_TEXT_BYTES} bytes")
    return out


def read_text_chunks(source: Union[str, os.PathLike, bytes]) -> dict[str, str]:
    """All text entries of a PNG as {key: text}; later chunks with the same key win."""
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "image"
    else:
        name = os.fspath(source)
        with open(name, "rb") as f:
            data = f.read()
    texts: dict[str, str] = {}
    for ctype, body in _iter_chunks(data, name):
        if ctype == b"tEXt":
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif ctype == b"zTXt":
            key, _, rest = body.partition(b"\0")
            texts[key.decode("latin-1")] = _inflate(rest[1:], name).decode("latin-1")
        elif ctype == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, _method = rest[0], rest[1]
            _lang, _, rest = rest[2:].partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            if compressed:
                value = _inflate(value, name)
            texts[key.decode("latin-1")] = value.decode("utf-8", errors="replace")
        elif ctype == b"comf":
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("utf-8", errors="replace")
    return texts


def _parse_json(text: str | None, key: str, name: str):
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ImageMetadataError(f"{name}: the '{key}' text chunk is not valid JSON ({e})") from None


def read_png_workflow(source: Union[str, os.PathLike, bytes]) -> dict:
    """{"prompt": API-format dict or None, "workflow": UI-format dict or None}."""
    name = "image" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    texts = read_text_chunks(source)
    return {
        "prompt": _parse_json(texts.get("prompt"), "prompt", name),
        "workflow": _parse_json(texts.get("workflow"), "workflow", name),
    }
