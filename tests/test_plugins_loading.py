"""Custom node packs (COMPAT §7): discovery, import, registration and failure reporting."""
from __future__ import annotations

import sys

from graph.runner import Runner
from nodes.custom_packs import PackOptions, discover, format_report, registry_with_packs
from tests.plugins_env import DOUBLE, package_pack, single_file_pack, write
from tests.server_nodes import make_registry


def load(root, options=PackOptions(), factory=make_registry):
    registry, reports = registry_with_packs(factory, [str(root)], options)
    return registry, {r.name: r for r in reports}


def test_single_file_and_package_packs_load_with_their_module_names(tmp_path):
    single_file_pack(tmp_path)
    package_pack(tmp_path)
    registry, reports = load(tmp_path)
    assert reports["single_pack"].status == "OK" and reports["single_pack"].node_classes == ["PackDouble"]
    assert reports["pkg_pack"].status == "OK" and reports["pkg_pack"].node_classes == ["PackTriple"]
    assert registry.get_class("PackTriple")().run(5) == (15,)  # through the relative imports
    info = registry.object_info()
    assert info["PackDouble"]["python_module"] == "custom_nodes.single_pack"
    assert info["PackDouble"]["display_name"] == "Double (pack)"
    assert info["PackTriple"]["python_module"] == "custom_nodes.pkg_pack"
    assert reports["pkg_pack"].web_directory == str(tmp_path / "pkg_pack" / "js")
    assert "Number" in registry  # the core nodes are all still there


def test_a_pack_named_like_our_packages_does_not_shadow_them(tmp_path):
    import graph

    write(tmp_path, "graph/__init__.py", DOUBLE + 'NODE_CLASS_MAPPINGS = {"GraphDouble": Double}\n')
    registry, reports = load(tmp_path)
    assert reports["graph"].status == "OK"
    assert sys.modules["graph"] is graph


def test_pack_sees_folder_paths_and_nodes_as_comfyui_names(tmp_path):
    from nodes import folder_paths as ours

    write(tmp_path, "compat_pack.py", '''
import sys

import folder_paths
import nodes


class UsesCompat:
    CATEGORY = "pack"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    SAW = {"folder_paths": folder_paths, "has_ksampler": "KSampler" in nodes.NODE_CLASS_MAPPINGS,
           "max": nodes.MAX_RESOLUTION}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 512, "max": nodes.MAX_RESOLUTION})}}

    def run(self, width):
        return (width,)


NODE_CLASS_MAPPINGS = {"UsesCompat": UsesCompat}
''')
    registry, reports = load(tmp_path)
    assert reports["compat_pack"].status == "OK", reports["compat_pack"].error
    saw = registry.get_class("UsesCompat").SAW
    assert saw["folder_paths"] is ours  # the same module object: shared state
    assert saw["has_ksampler"] is True and saw["max"] == 16384


def test_failing_and_empty_packs_are_reported_and_the_others_load(tmp_path):
    write(tmp_path, "needs_missing.py", "import surely_not_installed_xyz\n")
    write(tmp_path, "raises/__init__.py", "raise RuntimeError('pack init exploded')\n")
    write(tmp_path, "empty_pack.py", "X = 1\n")
    single_file_pack(tmp_path)
    registry, reports = load(tmp_path)
    assert reports["needs_missing"].status == "FAILED"
    assert reports["needs_missing"].error == "missing module 'surely_not_installed_xyz'"
    assert reports["raises"].status == "FAILED" and "pack init exploded" in reports["raises"].error
    assert reports["empty_pack"].status == "FAILED" and reports["empty_pack"].error == "no NODE_CLASS_MAPPINGS"
    assert reports["single_pack"].status == "OK" and "PackDouble" in registry
    text = format_report(list(reports.values()))
    assert "needs_missing FAILED (missing module 'surely_not_installed_xyz')" in text
    assert "single_pack OK" in text


def test_core_names_win_over_a_pack_and_the_clash_is_reported(tmp_path):
    core_add = make_registry().get_class("Add")
    write(tmp_path, "clash_pack.py", DOUBLE + 'NODE_CLASS_MAPPINGS = {"Add": Double, "ClashDouble": Double}\n'
          'NODE_DISPLAY_NAME_MAPPINGS = {"Add": "Hijacked"}\n')
    registry, reports = load(tmp_path)
    assert registry.get_class("Add") is core_add
    assert registry.display_name("Add") == "Add"
    assert reports["clash_pack"].node_classes == ["ClashDouble"]
    assert "core" in reports["clash_pack"].skipped["Add"]


def test_broken_classes_are_skipped_the_rest_of_the_pack_loads(tmp_path):
    write(tmp_path, "broken_pack.py", DOUBLE + '''
class Raises:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        raise ValueError("no inputs today")

    def run(self):
        return (1,)


class NoFunction:
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}


class NoReturnTypes:
    FUNCTION = "run"

    def run(self):
        return ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}


class WrongFunction:
    RETURN_TYPES = ("INT",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}


NODE_CLASS_MAPPINGS = {"Good": Double, "Raises": Raises, "NoFunction": NoFunction,
                       "NoReturnTypes": NoReturnTypes, "WrongFunction": WrongFunction}
''')
    registry, reports = load(tmp_path)
    report = reports["broken_pack"]
    assert report.status == "OK" and report.node_classes == ["Good"]
    assert "no inputs today" in report.skipped["Raises"]
    assert "lacks FUNCTION" in report.skipped["NoFunction"]
    assert "lacks RETURN_TYPES" in report.skipped["NoReturnTypes"]
    assert "'execute'" in report.skipped["WrongFunction"]
    assert "Raises" not in registry and "Good" in registry


def test_prestartup_scripts_run_before_core_and_pack_imports(tmp_path):
    log = tmp_path / "order.txt"
    root = tmp_path / "custom_nodes"
    write(root, "early/prestartup_script.py", f"open({str(log)!r}, 'a').write('prestartup\\n')\n")
    write(root, "early/__init__.py", f"open({str(log)!r}, 'a').write('import\\n')\n" + DOUBLE
          + 'NODE_CLASS_MAPPINGS = {"EarlyDouble": Double}\n')

    def factory():
        with open(log, "a") as f:
            f.write("core\n")
        return make_registry()

    registry, reports = load(root, factory=factory)
    assert log.read_text().split() == ["prestartup", "core", "import"]
    assert reports["early"].status == "OK"


def test_discovery_skips_disabled_pycache_and_other_files(tmp_path):
    single_file_pack(tmp_path)
    write(tmp_path, "off.py.disabled", "raise RuntimeError('must not import')\n")
    write(tmp_path, "offdir.disabled/__init__.py", "raise RuntimeError('must not import')\n")
    write(tmp_path, "__pycache__/x.py", "")
    write(tmp_path, "README.md", "text\n")
    assert [p.rsplit("/", 1)[1] for p in discover([str(tmp_path), str(tmp_path / "absent")])] == ["single_pack.py"]


def test_disable_all_and_whitelist(tmp_path):
    single_file_pack(tmp_path)
    package_pack(tmp_path)
    _, none = load(tmp_path, PackOptions(disable_all=True))
    assert none == {}
    _, only = load(tmp_path, PackOptions(disable_all=True, whitelist=("pkg_pack",)))
    assert list(only) == ["pkg_pack"]


def test_a_pack_node_runs_in_a_prompt(tmp_path):
    single_file_pack(tmp_path)
    package_pack(tmp_path)
    registry, _ = load(tmp_path)
    prompt = {"1": {"class_type": "PackDouble", "inputs": {"value": 7}},
              "2": {"class_type": "PackTriple", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    result = Runner(registry).run(prompt)
    assert result.outputs["3"] == {"value": [42]}
