"""The library's import graph, read from the source (ast; nothing is imported): data flows
one way. A stage module (one per paper stage, the entry of its rule) imports helpers,
never another stage module, and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "innout"
STAGES = {"scene", "poses", "masks", "pretrain", "base", "inpaint", "refine", "render", "evaluate"}
"""The paper stages' entry modules (DEVELOPERS.md: one stage, one rule file, one module)."""


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the innout modules it imports anywhere in its file (top level or inside
    functions: an import inside a function is an edge all the same)."""
    modules = {p.stem for p in src.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in src.glob("*.py"):
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # from .x import y / from . import x
                    names = [node.module] if node.module else [a.name for a in node.names]
                elif node.module == "innout":
                    names = [a.name for a in node.names]
                elif node.module and node.module.startswith("innout."):
                    names = [node.module.split(".")[1]]
                else:
                    names = []
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("innout.")]
            else:
                continue
            edges.update(n for n in names if n in modules and n != path.stem)
        graph[path.stem] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_stage_list_names_existing_modules():
    assert STAGES <= set(import_graph()), STAGES - set(import_graph())


def test_the_import_graph_is_acyclic():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_no_stage_module_imports_another_stage():
    graph = import_graph()
    crossings = sorted(f"{m} imports {d}" for m in STAGES for d in graph[m] & STAGES)
    assert crossings == [], crossings


def test_the_checks_see_cycles_and_crossings(tmp_path):
    """The graph reader finds edges written every way the library writes them."""
    (tmp_path / "a.py").write_text("from innout.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import c\n")
    (tmp_path / "c.py").write_text("import innout.a\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


ENTRY_POINTS = {"cli"}
"""Modules above the stages: the command line calls stage entries."""


def test_no_helper_imports_a_stage_module():
    """Helpers sit below every stage: a helper that imported a stage would tie that stage
    to every other stage using the helper."""
    graph = import_graph()
    helpers = set(graph) - STAGES - ENTRY_POINTS
    crossings = sorted(f"{m} imports {d}" for m in helpers for d in graph[m] & STAGES)
    assert crossings == [], crossings


def repeated_blocks(src: Path = SRC, size: int = 6) -> list[list[tuple[str, int]]]:
    """Places where the same ``size`` code lines (stripped; blank lines, comments, imports
    and lone closing brackets left out) stand more than once in the library."""
    seen: dict[tuple[str, ...], list[tuple[str, int]]] = {}
    for path in sorted(src.glob("*.py")):
        code = [(i + 1, line.strip()) for i, line in enumerate(path.read_text().splitlines())]
        code = [(i, line) for i, line in code if line and not line.startswith(("#", "import ", "from "))
                and line not in (")", "]", "}", '"""')]
        for k in range(len(code) - size + 1):
            seen.setdefault(tuple(line for _, line in code[k:k + size]), []).append((path.name, code[k][0]))
    return [places for places in seen.values() if len(places) > 1]


def test_no_block_of_six_lines_is_repeated():
    """A helper lives once: a second copy of six lines is a helper to share."""
    assert repeated_blocks() == [], repeated_blocks()[:5]


def test_repeated_blocks_are_found(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(6))
    (tmp_path / "a.py").write_text("def f():\n" + body)
    (tmp_path / "b.py").write_text("import os\n\n\ndef g():\n" + body)
    assert repeated_blocks(tmp_path) == [[("a.py", 2), ("b.py", 5)]]


def test_a_module_over_600_lines_says_why_at_its_top():
    """Modules of one concern stay short; a longer one carries a reason on its first line."""
    long = [p.name for p in SRC.glob("*.py")
            if len(p.read_text().splitlines()) > 600 and not p.read_text().startswith("# Over 600 lines: ")]
    assert long == [], long
