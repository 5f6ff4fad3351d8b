"""The import arrows of DESIGN.md: graph/ and diffusion/ stay independent of what sits above them, and
server/ reads only what main.py hands it (no nodes/, no diffusion/)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = {
    "graph": {"torch", "nodes", "diffusion", "server"},
    "diffusion": {"graph", "nodes", "server"},
    "server": {"nodes", "diffusion"},
}


def imported_modules(tree: ast.AST):
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for alias in n.names:
                yield n.lineno, alias.name
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            yield n.lineno, n.module
        elif isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", "")) in (
                "import_module", "__import__") and n.args and isinstance(n.args[0], ast.Constant) \
                and isinstance(n.args[0].value, str):
            yield n.lineno, n.args[0].value


def sources(package):
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package):
    bad = []
    for path in sources(package):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for line, module in imported_modules(tree):
            if module.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{os.path.relpath(path, ROOT)}:{line} imports {module}")
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_checker_catches_violations():
    tree = ast.parse("import torch.nn\nfrom nodes.registry import X\nimportlib.import_module('server')\n"
                     "from . import sibling\n")
    assert [m for _l, m in imported_modules(tree)] == ["torch.nn", "nodes.registry", "server"]
