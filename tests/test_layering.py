"""The layers are visible in the imports: cli -> flows -> tasks -> models -> pretrain.

A package may import only the packages to its right; the ground, ``pretrain`` (config,
provenance, paths, outputs, errors), imports none of the others. Every import counts, at
module level or inside a function: one in a function body runs all the same, and that is
how a cycle went unseen (models.perplexity read its corpus through tasks.quality.corpus
while tasks imported models). The graph is ``pretrain.codegraph``'s, the one the cache keys
are computed from. bench/, scripts/ and tests/ sit outside the layers and may import anything.
"""

from __future__ import annotations

from pathlib import Path

from pretrain.codegraph import ROOT, imported_names, module_name, project_packages

LAYERS = ("cli", "flows", "tasks", "models", "pretrain")  # each may import the ones after it

# Imports that break the rules in files their owners are still rewriting: (importer, imported) -> why.
# Remove an entry when its file is done; test_every_allowance_is_still_needed fails on a stale one.
ALLOWED: dict[tuple[str, str], str] = {}


def project_modules() -> dict[str, Path]:
    files = (path for layer in LAYERS for path in (ROOT / layer).rglob("*.py") if "__pycache__" not in path.parts)
    return {module_name(path): path for path in sorted(files)}


def import_graph() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports (anywhere in the file)."""
    modules = project_modules()

    def resolve(name: str) -> str | None:  # pretrain.config.ModelConfig -> pretrain.config
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {name: {target for imported in imported_names(path) if (target := resolve(imported)) not in (None, name)}
            for name, path in modules.items()}


def layer(module: str) -> int:
    return LAYERS.index(module.partition(".")[0])


def upward_imports() -> list[str]:
    """``importer -> imported`` for every import of a layer to the left, less the allowances."""
    return [f"{source} -> {target}" for source, targets in import_graph().items() for target in sorted(targets)
            if layer(target) < layer(source) and (source, target) not in ALLOWED]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_every_project_package_has_a_layer():
    assert project_packages(ROOT) == set(LAYERS)


def test_the_ground_imports_nothing_above_it():
    graph = import_graph()
    above = [f"{source} -> {target}" for source, targets in graph.items() if source.startswith("pretrain")
             for target in sorted(targets) if not target.startswith("pretrain")]
    assert not above, "the ground imports from above it:\n" + "\n".join(above)


def test_each_layer_imports_only_the_layers_below_it():
    upward = upward_imports()
    assert not upward, f"imports of a layer above (order {' -> '.join(LAYERS)}):\n" + "\n".join(upward)


def test_no_import_cycle_among_modules():
    graph = {source: {t for t in targets if (source, t) not in ALLOWED} for source, targets in import_graph().items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_among_layers():
    """A cycle between packages (models -> tasks -> models) is one even when no two modules import each other."""
    graph: dict[str, set[str]] = {}
    witness: dict[tuple[str, str], str] = {}
    for source, targets in import_graph().items():
        for target in targets:
            a, b = source.partition(".")[0], target.partition(".")[0]
            if a != b and (source, target) not in ALLOWED:
                graph.setdefault(a, set()).add(b)
                witness.setdefault((a, b), f"{source} imports {target}")
    cycle = find_cycle(graph)
    assert cycle is None, "package cycle: " + "; ".join(witness[edge] for edge in zip(cycle, cycle[1:]))


def test_every_allowance_is_still_needed():
    graph = import_graph()
    assert [edge for edge in ALLOWED if edge[1] not in graph.get(edge[0], set())] == []


def test_the_checks_see_imports_inside_functions(tmp_path):
    """The graph counts an import written in a function body, the kind that hid the cycle."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.py").write_text("def f():\n    from tasks.quality.corpus import iter_corpus\n")
    assert "tasks.quality.corpus" in imported_names(tmp_path / "models" / "m.py", tmp_path)
