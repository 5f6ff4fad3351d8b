"""Plain-Python node classes and stand-ins used by the server tests (no torch, milliseconds)."""
from __future__ import annotations

import os
import time

from graph.contract import ExecutionBlocker
from graph.progress import check_interrupt, report_progress


class Number:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -1000, "max": 1000})}}

    def run(self, value):
        return (value,)


class Add:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT",), "b": ("INT",)}}

    def run(self, a, b):
        return (a + b,)


class Show:
    """Output node: reports its value as UI."""
    CATEGORY = "test"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    def run(self, value):
        return {"ui": {"value": [value]}}


class Steps:
    """Reports progress `steps` times, sleeping `delay` seconds each, with an optional preview."""
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "steps": ("INT", {"min": 0, "max": 10000}),
                             "delay": ("FLOAT", {"min": 0.0, "max": 60.0})},
                "optional": {"preview": ("BOOLEAN",)}}

    def run(self, value, steps, delay, preview=False):
        image = None
        if preview:
            from PIL import Image
            image = Image.new("RGB", (64, 48), (200, 10, 10))
        for i in range(steps):
            time.sleep(delay)
            check_interrupt()
            report_progress(i + 1, steps, image)
        return (value,)


class Fail:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    def run(self, value):
        raise RuntimeError(f"node failed on purpose with {value}")


class Block:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    def run(self, value):
        return (ExecutionBlocker("blocked on purpose"),)


class SaveText:
    """Output node that writes a file into the output directory and returns its reference."""
    CATEGORY = "test"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    output_dir = None  # set by the test fixture

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "filename": ("STRING",)}}

    def run(self, value, filename):
        with open(os.path.join(self.output_dir, filename), "w") as f:
            f.write(str(value))
        return {"ui": {"images": [{"filename": filename, "subfolder": "", "type": "output"}]}}


class Append:
    """Output node that appends its value as a line to `path` (to count how often it ran)."""
    CATEGORY = "test"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "path": ("STRING",)}}

    def run(self, value, path):
        with open(path, "a") as f:
            f.write(f"{value}\n")
        return {"ui": {"value": [value]}}


NODES = {"Append": Append, "Number": Number, "Add": Add, "Show": Show, "Steps": Steps, "Fail": Fail, "Block": Block,
         "SaveText": SaveText}


def make_registry():
    from nodes.registry import NodeRegistry

    registry = NodeRegistry()
    for name, cls in NODES.items():
        registry.register(name, cls, python_module="tests.server_nodes")
    return registry


class FakeFolderPaths:
    """The part of the folder_paths API the server uses, rooted at a temporary directory."""

    def __init__(self, base):
        self.base = str(base)
        self.folder_names_and_paths = {
            "checkpoints": ([os.path.join(self.base, "models", "checkpoints")], {".safetensors", ".ckpt"}),
            "embeddings": ([os.path.join(self.base, "models", "embeddings")], {".safetensors", ".pt"}),
        }
        self._dirs = {k: os.path.join(self.base, k) for k in ("input", "output", "temp", "user")}
        for d in [*self._dirs.values(), *[p for v in self.folder_names_and_paths.values() for p in v[0]]]:
            os.makedirs(d, exist_ok=True)

    def get_input_directory(self):
        return self._dirs["input"]

    def get_output_directory(self):
        return self._dirs["output"]

    def get_temp_directory(self):
        return self._dirs["temp"]

    def get_user_directory(self):
        return self._dirs["user"]

    def get_folder_paths(self, key):
        return list(self.folder_names_and_paths[key][0])

    def get_filename_list(self, key):
        paths, exts = self.folder_names_and_paths[key]
        out = set()
        for root in paths:
            for dirpath, _, files in os.walk(root, followlinks=True):
                for f in files:
                    if not exts or os.path.splitext(f)[1].lower() in exts:
                        out.add(os.path.relpath(os.path.join(dirpath, f), root))
        return sorted(out)

    def get_full_path(self, key, name):
        for root in self.folder_names_and_paths[key][0]:
            path = os.path.join(root, os.path.normpath("/" + name).lstrip("/"))
            if os.path.isfile(path):
                return path
        return None

    def add_model_folder_path(self, key, path, is_default=False):
        paths, _ = self.folder_names_and_paths.setdefault(key, ([], set()))
        paths.insert(0, path) if is_default else paths.append(path)


def make_executor(registry):
    from graph.cache import make_cache
    from graph.executor import Executor

    return Executor(registry, cache=make_cache("classic"))
