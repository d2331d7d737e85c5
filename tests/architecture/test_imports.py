"""The layout's rules, enforced: no import cycles among enclip's modules, and a query path free of training code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import enclip

PACKAGE_ROOT = Path(enclip.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """enclip module -> the enclip modules it imports anywhere in its body (function-level imports included)."""
    modules = {_module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def test_the_graph_sees_known_edges():
    graph = _import_graph()
    assert "enclip.store" in graph["enclip.search.searcher"] and "enclip.store.index_dir" in graph["enclip.store"]
    assert "enclip.models.registry" in graph["enclip.models.hf_clip"]


def test_no_import_cycles_between_enclip_modules():
    graph = _import_graph()
    graph_with_parents = {module: {t for t in targets if not module.startswith(t + ".")}
                          for module, targets in graph.items()}  # a package's __init__ may re-export its children
    assert _cycles(graph_with_parents) == []


def test_a_cycle_is_detected():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(m for m in sys.modules if m.startswith('enclip'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_query_path_never_loads_training_code():
    loaded = _loaded_after("import enclip.search, enclip.serve.app, enclip.store, enclip.cli\n"
                           "from enclip import load_searcher")
    assert "enclip.search.searcher" in loaded and "enclip.serve.app" in loaded
    assert not [m for m in loaded if m.startswith("enclip.train") or m == "enclip.indexing"]
