"""Reading prompt/workflow text chunks from PNG files (COMPAT §2.3)."""
import io
import json
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from graph.png_metadata import ImageMetadataError, read_png_workflow, read_text_chunks
from graph.workflow_formats import WorkflowFormatError, load_workflow

PROMPT = {"3": {"class_type": "Save", "inputs": {"prefix": "ünïcode ✓"}}}
WORKFLOW = {"nodes": [], "links": [], "version": 0.4}


def png_bytes(texts=None, itxt=None, ztxt=None):
    info = PngImagePlugin.PngInfo()
    for k, v in (texts or {}).items():
        info.add_text(k, v)
    for k, v in (itxt or {}).items():
        info.add_itxt(k, v, zip=True)
    for k, v in (ztxt or {}).items():
        info.add_text(k, v, zip=True)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_text_chunks_as_comfyui_writes_them(tmp_path):
    data = png_bytes({"prompt": json.dumps(PROMPT), "workflow": json.dumps(WORKFLOW)})
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert read_png_workflow(path) == {"prompt": PROMPT, "workflow": WORKFLOW}
    assert load_workflow(path) == ("api", PROMPT)
    assert load_workflow(data) == ("api", PROMPT)


def test_compressed_and_international_chunks():
    data = png_bytes(itxt={"workflow": json.dumps(WORKFLOW)}, ztxt={"prompt": json.dumps(PROMPT)})
    assert read_png_workflow(data) == {"prompt": PROMPT, "workflow": WORKFLOW}


def test_workflow_only_png_gives_ui_format():
    data = png_bytes({"workflow": json.dumps(WORKFLOW)})
    assert load_workflow(data) == ("ui", WORKFLOW)


def test_apng_private_comf_chunk():
    base = png_bytes()
    body = b"prompt\0" + json.dumps(PROMPT).encode()
    chunk = struct.pack(">I", len(body)) + b"comf" + body + struct.pack(">I", zlib.crc32(b"comf" + body))
    iend = base.rindex(b"IEND") - 4
    data = base[:iend] + chunk + base[iend:]
    assert read_text_chunks(data)["prompt"] == json.dumps(PROMPT)


def test_damaged_files_give_clear_errors(tmp_path):
    data = png_bytes({"prompt": json.dumps(PROMPT)})
    with pytest.raises(ImageMetadataError, match="truncated PNG"):
        read_png_workflow(data[:40])
    with pytest.raises(ImageMetadataError, match="not a PNG"):
        read_png_workflow(b"GIF89a....")
    bad = png_bytes({"prompt": "{not json"})
    with pytest.raises(ImageMetadataError, match="'prompt' text chunk is not valid JSON"):
        read_png_workflow(bad)
    plain = png_bytes()
    with pytest.raises(WorkflowFormatError, match="no embedded workflow"):
        load_workflow(plain)
