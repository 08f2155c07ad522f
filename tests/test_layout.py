"""The shape of the code (DESIGN §4), read from the package's imports with `ast`.

One direction of dependency: the CLI knows everything, recipes know components, components know
nothing above them; the verbs' run configuration stays with the CLI and the recipes; the shapes world
and the built-in test bed sit beside the method, imported only by recipes and the CLI. Imports inside
functions count as much as those at the top of a file.

`KNOWN` lists what the restructuring has not yet moved, each with what still holds it there. The test
asserts the list exactly: a new breach fails, and so does a fixed one still listed, so the list can
only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hermesflow"

# Lowest first; a module may import its own layer and those below it.
LAYERS = {
    "base": ("__init__", "errors", "io", "config", "options", "stages", "accel", "sharding", "api", "results", "stats", "progress"),
    "records": ("records", "sources", "data", "tifa", "importer", "prefs"),
    "backbones": ("backbones",),
    "method": ("losses", "selfplay", "scorers", "judges", "loop"),
    "components": ("curate", "train", "grpo", "evaluate", "report", "questions", "benchmarks", "convert_showo"),
    "recipes": ("recipes", "settings", "status", "plan"),
    "cli": ("cli", "__main__"),
}
# Beside the method: the shapes world (its own floor, above the records it writes), and the built-in
# model with its pretraining (the test bed), which may use the world.
WORLD = ("world",)
TESTBED = ("testbed",)
RUN_CONFIGURATION = "settings"
MAY_IMPORT_WORLD = ("recipes", "cli", "testbed", "world")

KNOWN: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports(path: Path) -> set[str]:
    """The package modules a file imports (absolute `hermesflow.x` imports, and relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m.removeprefix("hermesflow.") for m in found if m.startswith("hermesflow.")} | (
        {"__init__"} if "hermesflow" in found else set())


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in files and m != name} for name, path in files.items()}


def place(module: str) -> str:
    """The layer (or 'world', 'testbed') a module belongs to, by its longest listed prefix."""
    if any(module == t or module.startswith(t + ".") for t in TESTBED):
        return "testbed"
    if any(module == w or module.startswith(w + ".") for w in WORLD):
        return "world"
    top = module.split(".")[0]
    return next(layer for layer, names in LAYERS.items() if top in names)


def rank(layer: str) -> int:
    order = list(LAYERS)
    # the world sits just above the records it writes; the test bed just below recipes (they load it)
    return {"world": order.index("records") + 0.5, "testbed": order.index("components") + 0.5}.get(layer, order.index(layer)
                                                                                                 if layer in order else 0)


def breaches(edges: dict[str, set[str]]) -> set[str]:
    found = set()
    for source, targets in edges.items():
        for target in targets:
            here, there = place(source), place(target)
            if there == "world" and here not in MAY_IMPORT_WORLD:
                found.add(f"{source.split('.')[0]} imports world")
            elif there != "world" and rank(there) > rank(here):
                found.add(f"{source.split('.')[0]} imports {target.split('.')[0]} (cli layer {there!r} above {here!r})"
                          if target.split(".")[0] == RUN_CONFIGURATION else
                          f"{source.split('.')[0]} imports {target.split('.')[0]} (layer {there!r} above {here!r})")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_place():
    unplaced = []
    for module in graph():
        try:
            place(module)
        except StopIteration:
            unplaced.append(module)
    assert not unplaced, f"modules in no layer of tests/test_layout.py: {unplaced}"


def test_the_package_imports_without_a_cycle():
    assert cycles(graph()) == []


def test_imports_run_down_the_layers_and_only_recipes_take_the_world_or_the_run_configuration():
    assert breaches(graph()) == KNOWN


def test_the_checker_sees_a_breach():
    """The rules are not vacuous: an upward import, a world import and a cycle are each caught."""
    assert breaches({"losses": {"curate"}}) == {"losses imports curate (layer 'components' above 'method')"}
    assert breaches({"train": {"world.oracle"}}) == {"train imports world"}
    assert breaches({"recipes.run": {"world.oracle", "settings"}}) == set()
    assert cycles({"data": {"tifa"}, "tifa": {"data"}}) == [["data", "tifa"]]
