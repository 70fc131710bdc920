"""The package's layering, read from its imports (every `import foundry...`, at module level or inside a
function), so that it stays true (docs/ARCHITECTURE.md, "Layers"):

- the base (errors, config, utils, lm_metrics, hardware) imports no other layer;
- data needs no model and no training;
- the model needs neither data nor training: it imports only the base (Hugging Face import hands the
  tokenizer file to the checkpoint store, which builds the tokenizer);
- the checkpoint store (foundry.checkpoints) reads and writes models: the model and the tokenizers (text and CLIP) only;
- training, evaluation and serving may use data, the model and the checkpoint store; evaluation also
  generates with the serving engine; serving never needs training or evaluation;
- only the commands layer (foundry.commands, foundry.cli) and the pipeline know the command line; the
  pipeline also reads a recipe's findings claims (foundry.eval.findings);
- no module imports one that imports it back, directly or through others, inside a layer too: the shared piece
  belongs in a module below both.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

LAYERS = {  # layer -> module prefixes
    "base": ["foundry", "foundry.errors", "foundry.config", "foundry.utils", "foundry.lm_metrics",
             "foundry.hardware"],
    "data": ["foundry.data"],
    "model": ["foundry.model"],
    "store": ["foundry.checkpoints"],
    "train": ["foundry.train", "foundry.selftest"],
    "eval": ["foundry.eval"],
    "serve": ["foundry.serve"],
    "commands": ["foundry.commands", "foundry.cli"],
    "pipeline": ["foundry.pipeline"],
}
STORE_TOKENIZERS = {"foundry.data.tokenizer", "foundry.data.clip_tokenizer"}  # what a checkpoint holds beside weights
ALLOWED = {  # layer -> layers it may import (besides itself)
    "base": set(),
    "data": {"base"},
    "model": {"base"},
    "store": {"base", "model"},
    "train": {"base", "data", "model", "store"},
    "eval": {"base", "data", "model", "store", "serve"},
    "serve": {"base", "data", "model", "store"},
    "commands": {"base", "data", "model", "store", "train", "eval", "serve", "pipeline"},
    "pipeline": {"base", "commands", "eval"},  # eval: a recipe's findings are eval.findings claims
}


def layer_of(module: str) -> str:
    best = max(((prefix, layer) for layer, prefixes in LAYERS.items() for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=lambda pl: len(pl[0]))
    return best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def foundry_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every foundry import in the file, wherever it appears."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "foundry"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "foundry":
            # `from foundry.model import hf` imports the module foundry.model.hf
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (SRC / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    SRC / Path(*sub.split("."))).is_dir()
                found.append((node.lineno, sub if is_module else node.module))
    return found


def violations() -> list[str]:
    problems = []
    for path in sorted((SRC / "foundry").rglob("*.py")):
        importer = module_name(path)
        mine = layer_of(importer)
        for line, imported in foundry_imports(path):
            theirs = layer_of(imported)
            if theirs == mine:
                continue
            if mine == "store" and theirs == "data" and imported in STORE_TOKENIZERS:
                continue
            if theirs not in ALLOWED[mine]:
                problems.append(f"{path.relative_to(SRC)}:{line}: {mine} imports {imported} ({theirs})")
    return problems


def import_graph() -> dict[str, set[str]]:
    """Each foundry module -> the foundry modules it imports, at module level or inside a function. An import
    names the module it binds (`from foundry.data import engine` -> foundry.data.engine); the packages
    above it, which Python runs first, are not counted, or every package door would cycle with its parts."""
    graph: dict[str, set[str]] = {}
    for path in sorted((SRC / "foundry").rglob("*.py")):
        importer = module_name(path)
        graph.setdefault(importer, set()).update(m for _, m in foundry_imports(path) if m != importer)
    return graph


def _shortest_path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """The shortest import chain start -> ... -> goal (breadth first), or None."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt == goal:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return path[::-1] + [goal]
            if nxt not in came_from and nxt != start:
                came_from[nxt] = node
                queue.append(nxt)
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    found, queue = set(), deque([start])
    while queue:
        for nxt in graph.get(queue.popleft(), ()):
            if nxt not in found:
                found.add(nxt)
                queue.append(nxt)
    return found


def import_cycles() -> list[list[str]]:
    """One shortest cycle (a -> b -> ... -> a) for every group of modules that import each other."""
    graph = import_graph()
    reach = {m: _reachable(graph, m) for m in graph}
    cycles, seen = [], set()
    for module in sorted(graph):
        if module in seen or module not in reach[module]:
            continue
        cycles.append(_shortest_path(graph, module, module))
        seen.update(m for m in reach[module] if module in reach.get(m, ()))  # its group: one cycle says it
    return cycles


def test_no_module_imports_one_that_imports_it_back():
    assert [" -> ".join(cycle) for cycle in import_cycles()] == []


def _fake_package(tmp_path, monkeypatch, files: dict[str, str]) -> None:
    """Point the checker at a planted foundry package of `files` ({"data/leaky.py": source})."""
    for name, source in {"__init__.py": "", **files}.items():
        path = tmp_path / "foundry" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)  # __import__ would give the tests package


def test_the_checker_sees_cycles_through_function_level_imports(tmp_path, monkeypatch):
    """The checker itself: a cycle inside one layer, closed by an import hidden inside a function, is seen."""
    _fake_package(tmp_path, monkeypatch, {
        "serve/server.py": "from foundry.serve.embeddings import create_embeddings_app\n",
        "serve/embeddings.py": "from foundry.serve.protocol import APIError\n",
        "serve/protocol.py": "def f():\n    from foundry.serve import server\n",
        "serve/web.py": "from foundry.serve.protocol import APIError\n"})  # imports into the cycle, is on none
    assert import_cycles() == [["foundry.serve.embeddings", "foundry.serve.protocol", "foundry.serve.server",
                                "foundry.serve.embeddings"]]


def test_the_layering_holds():
    assert violations() == []


def test_the_checker_sees_function_level_imports(tmp_path, monkeypatch):
    """The checker itself: an import hidden inside a function is still an import."""
    _fake_package(tmp_path, monkeypatch, {"data/leaky.py": "def f():\n    from foundry.train.loop import train\n"})
    assert violations() == ["foundry/data/leaky.py:2: data imports foundry.train.loop (train)"]


@pytest.mark.parametrize("module, layer", [("foundry.train.stage", "train"), ("foundry.checkpoints", "store"),
                                           ("foundry.utils.io", "base"), ("foundry.cli", "commands"),
                                           ("foundry.checkpoints.files", "store")])
def test_layer_names(module, layer):
    assert layer_of(module) == layer
