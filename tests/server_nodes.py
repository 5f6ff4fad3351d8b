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


class StandInRegistry:
    """Used only while nodes/registry.py is not there yet: the contract's registry surface."""

    def __init__(self):
        self.classes = {}

    def register(self, class_type, cls, display_name=None, python_module="nodes"):
        self.classes[class_type] = cls

    def get_class(self, class_type):
        return self.classes.get(class_type)

    def __contains__(self, class_type):
        return class_type in self.classes

    def class_types(self):
        return list(self.classes)

    def object_info_for(self, class_type):
        cls = self.classes.get(class_type)
        if cls is None:
            return None
        types = cls.INPUT_TYPES()
        return {"input": types, "input_order": {k: list(v) for k, v in types.items()},
                "output": list(cls.RETURN_TYPES), "output_is_list": [False] * len(cls.RETURN_TYPES),
                "output_name": list(cls.RETURN_TYPES), "name": class_type, "display_name": class_type,
                "description": "", "python_module": "tests", "category": cls.CATEGORY,
                "output_node": getattr(cls, "OUTPUT_NODE", False)}

    def object_info(self):
        return {name: self.object_info_for(name) for name in self.classes}


def make_registry():
    try:
        from nodes.registry import NodeRegistry
    except ImportError:
        NodeRegistry = StandInRegistry

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


class StandInExecutor:
    """Used only while graph/executor.py is not there yet: runs nodes in order, emits the
    contract's events for the simple cases (no caching, no lists, no lazy inputs)."""

    def __init__(self, registry, cache=None):
        import threading
        self.registry = registry
        self._flag = threading.Event()

    def interrupt(self):
        self._flag.set()

    def reset(self):
        pass

    def execute(self, prompt, prompt_id, extra_data, outputs, listeners=()):
        import types
        from graph import progress
        from graph.contract import InterruptProcessing

        def emit(event, data):
            messages.append([event, data]) if event in ("execution_start", "execution_cached",
                                                        "execution_success", "execution_error",
                                                        "execution_interrupted") else None
            for listener in listeners:
                listener(event, data)

        self._flag.clear()
        messages, done, ui_out = [], {}, {}
        emit("execution_start", {"prompt_id": prompt_id, "timestamp": 0})
        emit("execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": 0})
        current = [None]

        def on_progress(run, value, total, preview):
            if preview is not None:
                emit("preview", {"prompt_id": prompt_id, "node_id": run.node_id, "display_node_id": run.node_id,
                                 "parent_node_id": None, "real_node_id": run.node_id, "image": preview})
            emit("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": run.node_id})

        def run(node_id):
            if node_id in done:
                return done[node_id]
            node = prompt[node_id]
            kwargs = {}
            for k, v in node["inputs"].items():
                kwargs[k] = run(v[0])[v[1]] if isinstance(v, list) else v
            if self._flag.is_set():
                raise InterruptProcessing()
            current[0] = node_id
            emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
            cls = self.registry.get_class(node["class_type"])
            token = progress.bind(progress.NodeRun(prompt_id, node_id, node_id, None, node_id,
                                                   self._flag, on_progress))
            try:
                out = getattr(cls(), cls.FUNCTION)(**kwargs)
            finally:
                progress.unbind(token)
            if isinstance(out, dict):
                if "ui" in out:
                    ui_out[node_id] = out["ui"]
                    emit("executed", {"node": node_id, "display_node": node_id, "output": out["ui"],
                                      "prompt_id": prompt_id})
                out = out.get("result", ())
            done[node_id] = out
            return out

        status = "success"
        try:
            for o in sorted(outputs):
                run(o)
            emit("execution_success", {"prompt_id": prompt_id, "timestamp": 0})
        except InterruptProcessing:
            status = "error"
            emit("execution_interrupted", {"prompt_id": prompt_id, "node_id": current[0], "node_type": "",
                                           "executed": list(done), "timestamp": 0})
        except Exception as e:
            status = "error"
            emit("execution_error", {"prompt_id": prompt_id, "node_id": current[0], "node_type": "",
                                     "executed": list(done), "exception_message": str(e),
                                     "exception_type": type(e).__name__, "traceback": [],
                                     "current_inputs": {}, "current_outputs": [], "timestamp": 0})
        emit("executing", {"node": None, "prompt_id": prompt_id})
        return types.SimpleNamespace(status_str=status, completed=status == "success", outputs=ui_out,
                                     messages=messages, meta={})


def make_executor(registry):
    try:
        from graph.executor import Executor
        from graph.cache import make_cache
    except ImportError:
        return StandInExecutor(registry)
    return Executor(registry, cache=make_cache("classic"))
