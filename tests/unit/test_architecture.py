"""The house plan, checked on the code: doors between packages go one way, and serving
never reaches training code. Reads every product module's imports (AST, including imports
inside functions), so a lazy import cannot hide a wrong door."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "pipelines", "flows", "serving", "refit")
# What each package may import of ours (the shell, refit, may import every room).
ALLOWED = {
    "core": set(),
    "pipelines": {"core"},
    "flows": {"core", "pipelines"},
    "serving": {"core", "pipelines"},
    "refit": {"core", "pipelines", "flows", "serving"},
}
# The rooms of pipelines/, lowest first: a room imports only rooms on a lower floor (the
# composition root, pipelines.workspace, sits on top).
FLOORS = {"images": 0, "models": 1, "loop": 1, "data": 2, "training": 3, "judge": 4, "workspace": 5}
# What serving may import of pipelines/: the TF-free rooms it needs.
# Serving's pages decide approvals: the registry's alias moves, without model code; the
# engine module converts versions registered before engines were built at registration; the
# Label page runs the ImageNet embedding (built elsewhere) when the loop works in it.
SERVING_MAY_USE = (
    "pipelines.images",
    "pipelines.loop",
    "pipelines.data.submissions",
    "pipelines.models.engine",
    "pipelines.models.embedding",
    "pipelines.judge.approval",
    "pipelines.judge.registry_moves",
    "pipelines.judge.registry_client",
)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    own = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    return {n for n in names if n in modules and n != own}


MODULES = _modules()
GRAPH = {name: _imports(path, MODULES) for name, path in MODULES.items()}


def _package(module: str) -> str:
    return module.split(".")[0]


def test_the_walk_sees_the_product() -> None:
    assert {"core.settings", "pipelines.training.fit", "serving.service", "refit.cli"} <= set(
        MODULES
    )
    assert "pipelines.images.decode" in GRAPH["serving.service"]


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_through_its_doors(package: str) -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _package(module) == package
        for target in targets
        if _package(target) != package and _package(target) not in ALLOWED[package]
    )
    assert not wrong, f"doors that go the wrong way: {wrong}"


def test_no_cycle_between_packages() -> None:
    edges = {
        (_package(m), _package(t))
        for m, ts in GRAPH.items()
        for t in ts
        if _package(m) != _package(t)
    }
    for a, b in edges:
        assert (b, a) not in edges, f"{a} and {b} import each other"
    reach = {p: {b for a, b in edges if a == p} for p in PACKAGES}
    for _ in PACKAGES:  # transitive closure
        reach = {p: r | {x for q in r for x in reach[q]} for p, r in reach.items()}
    assert not [p for p in PACKAGES if p in reach[p]], f"cycle through {reach}"


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipelines" and len(parts) > 1 else None


def test_pipelines_has_only_its_rooms_and_the_composition_root() -> None:
    flat = sorted(
        m
        for m in MODULES
        if _package(m) == "pipelines" and m.count(".") == 1 and _room(m) not in FLOORS
    )
    assert not flat, f"modules left flat in pipelines/: {flat}"


def test_rooms_of_pipelines_import_only_lower_floors() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _room(module) in FLOORS
        for target in targets
        if _room(target) in FLOORS
        and _room(target) != _room(module)
        and FLOORS[_room(target)] >= FLOORS[_room(module)]
    )
    assert not wrong, f"doors that go up or sideways: {wrong}"


def test_serving_imports_only_the_rooms_it_needs() -> None:
    seen, todo = set(), [m for m in MODULES if _package(m) == "serving"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += GRAPH[module]
    reached = {m for m in seen if _package(m) == "pipelines" and m != "pipelines"}
    wrong = sorted(m for m in reached if not m.startswith(SERVING_MAY_USE))
    assert not wrong, f"serving reaches {wrong}"


def test_no_two_modules_import_each_other_even_lazily() -> None:
    """Any cycle between modules, through lazy and TYPE_CHECKING imports too (a package's
    door counts only for what its __init__ itself imports)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module)):
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")


def test_no_settings_object_is_built_at_import_time() -> None:
    """Settings come from ``core.settings.get_settings()`` inside functions; only the BentoML
    entry module reads them at module level (its decorators need the batching knobs)."""
    offenders = []
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
                continue
            calls = [n for n in ast.walk(node.value) if isinstance(n, ast.Call)]
            names = {getattr(c.func, "id", getattr(c.func, "attr", "")) for c in calls}
            if names & {"Settings", "get_settings"} and name != "serving.service":
                offenders.append(name)
    assert not offenders
