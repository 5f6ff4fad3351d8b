"""Custom node packs written into a temporary custom_nodes/ folder, for the tests/test_plugins_* files."""
from __future__ import annotations

import textwrap
from pathlib import Path



def int_node(class_name: str, expression: str) -> str:
    """Source of a plain node class in ComfyUI's style (no @node): INT `value` -> INT `expression`."""
    return f'''
class {class_name}:
    CATEGORY = "pack"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"value": ("INT", {{"default": 1}})}}}}

    def run(self, value):
        return ({expression},)
'''


DOUBLE = int_node("Double", "value * 2")


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def single_file_pack(root: Path, name: str = "single_pack") -> Path:
    return write(root, f"{name}.py", DOUBLE + '''
NODE_CLASS_MAPPINGS = {"PackDouble": Double}
NODE_DISPLAY_NAME_MAPPINGS = {"PackDouble": "Double (pack)"}
''')


def package_pack(root: Path, name: str = "pkg_pack") -> Path:
    """A package whose __init__ reaches its nodes through relative imports (two levels)."""
    write(root, f"{name}/helpers/__init__.py", "")
    write(root, f"{name}/helpers/maths.py", "def triple(x):\n    return 3 * x\n")
    write(root, f"{name}/nodes_impl.py", "from .helpers.maths import triple\n"
          + int_node("Triple", "triple(value)"))
    write(root, f"{name}/__init__.py", '''
from .nodes_impl import Triple

NODE_CLASS_MAPPINGS = {"PackTriple": Triple}
WEB_DIRECTORY = "./js"
''')
    write(root, f"{name}/js/ext.js", "// frontend extension\n")
    return root / name


def saving_pack(root: Path, name: str = "saving_pack") -> Path:
    """An output node that writes its INT into folder_paths' output directory (as packs do)."""
    return write(root, f"{name}.py", '''
import os

import folder_paths


class PackSaveInt:
    CATEGORY = "pack"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    def save(self, value):
        with open(os.path.join(folder_paths.get_output_directory(), "pack_value.txt"), "w") as f:
            f.write(str(value))
        return {"ui": {"value": [value]}}


NODE_CLASS_MAPPINGS = {"PackSaveInt": PackSaveInt}
''')
