"""The import arrows of DESIGN.md: graph/ and diffusion/ stay independent of what sits above them,
server/ reads only what main.py hands it (no nodes/, no diffusion/), and no two files import each
other, directly or round a longer loop (imports inside functions count too: a lazy import only hides
a cycle)."""
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


PROJECT = ("graph", "nodes", "diffusion", "server")
TOP_MODULES = ("main", "wiring")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _project_files() -> dict[str, str]:
    files = {_module_name(p): p for package in PROJECT for p in sources(package)}
    files.update({m: os.path.join(ROOT, m + ".py") for m in TOP_MODULES if os.path.exists(os.path.join(ROOT, m + ".py"))})
    return files


def _targets(tree: ast.AST, module: str, is_package: bool, known: set[str]):
    """Project modules a file imports: `import a.b`, `from a import b` (b a module or a name in a),
    relative forms resolved against the file's package."""
    package = module if is_package else module.rpartition(".")[0]
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (n.level - 1)]
                base = ".".join(parts + ([n.module] if n.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in n.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a name inside a module
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def import_graph() -> dict[str, set[str]]:
    files = _project_files()
    known = set(files)
    graph = {}
    for module, path in files.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        graph[module] = set(_targets(tree, module, path.endswith("__init__.py"), known))
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan, iterative)."""
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], [0]

    def strongconnect(root):
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return result


def test_no_import_cycles_between_files():
    cycles = find_cycles(import_graph())
    assert not cycles, "files that import each other (directly or round a loop):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_cycle_finder_sees_loops():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("from . import b\nfrom .c import thing\nimport a.d.name\n")
    assert sorted(_targets(tree, "a.x", False, {"a", "a.b", "a.c", "a.d", "a.x"})) == ["a.b", "a.c", "a.d"]
