"""The house rules of the package, checked on its source with ``ast`` (nothing is imported).

- no import cycles among the package's modules, and each subpackage imports only the layers
  below it (docs/architecture.md);
- no module over 600 lines;
- no private name of a module used from another subpackage (``from m import _x``, ``m._x``);
  and, found by a heuristic, no private attribute of another subpackage's classes (``store._run``);
- every module has a docstring that says what it owns;
- the names pickled into existing journals keep their import paths;
- the tests call no private method of a store (they use the public contract);
- asyncio itself is used only by the modules of ``ASYNCIO_ALLOWED``, each behind a driver or SDK
  that forces it (the rest goes through anyio).

Every import counts, wherever it is: at module level, under ``TYPE_CHECKING``, or inside a
function (a deferred import that dodges a cycle at import time is still a cycle in the design).
A subpackage is the package a module sits in: ``_core``, ``_journal``, ``_backends``,
``_journaled``, ``_cli``, and ``jeevesagent.runtime`` itself for the top-level modules
(``_errors``, ``_policy`` and the public modules). The published names and import paths are
checked by test_public_api.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jeevesagent"
TESTS = ROOT / "tests"

MAX_LINES = 600
# Modules allowed over MAX_LINES, each with its reason. Keep it empty.
LINE_ALLOWANCES: dict[str, str] = {}

# Names that live on because existing journals pickled their import paths (module, name).
PICKLED_PATHS = [
    ("jeevesagent.runtime._policy", "JournaledFailure"),
    ("jeevesagent.runtime._policy", "_rebuild_failed"),
    ("jeevesagent.runtime._errors", "_rebuild"),
]


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    lines: int
    imports: set[str] = field(default_factory=set)  # modules of the package this one imports

    @property
    def subpackage(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def load_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        text = path.read_text(encoding="utf-8")
        modules[".".join(parts)] = Module(
            ".".join(parts), path, is_package, ast.parse(text, str(path)), len(text.splitlines())
        )
    return modules


MODULES = load_modules()


def resolve_from(module: Module, node: ast.ImportFrom) -> str:
    """The absolute name of the module ``from X import ...`` reads ``X`` from."""
    if not node.level:
        return node.module or ""
    base = module.subpackage.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(module: Module) -> Iterator[tuple[ast.AST, str]]:
    """Each import node with the package module it imports (``from . import x``: module x)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    yield node, f"{source}.{alias.name}"
                elif source in MODULES:
                    yield node, source


for _module in MODULES.values():
    _module.imports = {target for _, target in imported_modules(_module)} - {_module.name}


# -- (a) import cycles -----------------------------------------------------------------------------


def import_cycles() -> list[list[str]]:
    """One cycle per strongly connected component of the import graph (Tarjan), shortest found."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in sorted(MODULES[name].imports):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == name:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for name in sorted(MODULES):
        if name not in index:
            visit(name)
    return [shortest_cycle(set(component)) for component in components]


def shortest_cycle(component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself (breadth first)."""
    start = min(component)
    paths: dict[str, list[str]] = {start: [start]}
    queue = [start]
    while queue:
        name = queue.pop(0)
        for target in sorted(MODULES[name].imports & component):
            if target == start:
                return [*paths[name], start]
            if target not in paths:
                paths[target] = [*paths[name], target]
                queue.append(target)
    raise AssertionError(f"no cycle through {start}")  # a component of two or more has one


def short(name: str) -> str:
    return name.removeprefix("jeevesagent.runtime.")


def test_the_import_graph_sees_the_layers() -> None:
    # Guards the checker itself: a few edges that exist, read from relative and absolute imports.
    runtime = MODULES["jeevesagent.runtime._journaled.runtime"].imports
    assert "jeevesagent.runtime._journal.backend" in runtime
    assert "jeevesagent.runtime._core.observe" in runtime  # from .._core import observe as _observe
    assert "jeevesagent.runtime._journaled.claims" in runtime
    assert "jeevesagent.runtime._journal.memory" in MODULES["jeevesagent.runtime.journal"].imports


def test_no_import_cycles() -> None:
    cycles = [" -> ".join(map(short, cycle)) for cycle in import_cycles()]
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


# Who may import whom, by subpackage (a module may always import its own subpackage). The public
# modules (``jeevesagent.runtime.*`` without an underscore) re-export and may import anything.
LAYERS: dict[str, set[str]] = {
    "_errors": set(),
    "_policy": {"_errors"},
    "_core": {"_errors", "_policy"},  # knows no store
    "_journal": {"_core", "_errors"},  # the store contract: knows no runtime and no driver
    "_journaled": {"_journal", "_core", "_errors", "_policy"},  # no driver, no bundled store
    "_backends": {"_journal", "_core", "_errors"},
    "_cli": {"_backends", "_journaled", "_journal", "_core", "_errors", "_policy"},
    "_integrations": {"_core", "_errors"},  # optional extras, on the public accessors
    "_dbos": {"_core", "_errors", "_policy"},  # DBOSRuntime: a BaseRuntime over DBOS, no journal
    "_ui": {"_cli", "_backends", "_journaled", "_journal", "_core", "_errors", "_policy"},
    "_temporal": {"_journaled", "_journal", "_core", "_errors"},  # the [temporal] extra's runtime
}
# Single modules with one more layer, and why.
LAYER_EXTRAS: dict[str, set[str]] = {
    "_backends.runtimes": {"_journaled"},  # SqliteRuntime, PostgresRuntime are JournaledRuntimes
}


def layer(name: str) -> str | None:
    """``_core`` for ``jeevesagent.runtime._core.keys``, ``_policy`` for ``..._policy``; None for
    the public modules and anything outside ``jeevesagent.runtime``."""
    rest = name.removeprefix("jeevesagent.runtime.")
    if rest == name:
        return None
    top = rest.partition(".")[0]
    return top if top in LAYERS else None


def layer_violations() -> list[str]:
    found = []
    for module in MODULES.values():
        own = layer(module.name)
        if own is None:
            continue
        allowed = LAYERS[own] | LAYER_EXTRAS.get(short(module.name), set()) | {own}
        for target in sorted(module.imports):
            if layer(target) not in allowed:
                found.append(f"{short(module.name)} imports {short(target)}")
    return found


def test_subpackages_import_only_the_layers_below_them() -> None:
    violations = layer_violations()
    assert violations == [], "imports across layers:\n" + "\n".join(violations)


def test_the_layer_map_names_every_private_top_level_module() -> None:
    tops = {
        top
        for m in MODULES.values()
        if m.name.startswith("jeevesagent.runtime.")
        and is_private(top := short(m.name).partition(".")[0])
    }
    assert tops == set(LAYERS), "add the new subpackage or module to LAYERS"


# -- (b) module size -------------------------------------------------------------------------------


def long_modules() -> list[str]:
    return [
        f"{m.rel}: {m.lines} lines"
        for m in MODULES.values()
        if m.lines > MAX_LINES and m.rel not in LINE_ALLOWANCES
    ]


def test_no_module_over_600_lines() -> None:
    assert long_modules() == []


def test_line_allowances_are_still_needed_and_give_a_reason() -> None:
    by_path = {m.rel: m for m in MODULES.values()}
    for path, reason in LINE_ALLOWANCES.items():
        assert path in by_path, f"{path} is gone: drop its allowance"
        assert by_path[path].lines > MAX_LINES, f"{path} fits now: drop its allowance"
        assert reason.strip(), path


# -- (c) private names across subpackages ----------------------------------------------------------


def module_bindings(module: Module) -> dict[str, str]:
    """Local names bound to a package module by an import: ``import a.b`` binds ``a``, ``from a
    import b`` (b a module) binds ``b``, ``import a.b as c`` binds ``c``."""
    bindings: dict[str, str] = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in MODULES:
                    bindings[alias.asname] = alias.name
                elif not alias.asname:
                    top = alias.name.partition(".")[0]
                    if top in MODULES:
                        bindings[top] = top
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    bindings[alias.asname or alias.name] = f"{source}.{alias.name}"
    return bindings


def dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None for anything but names and attributes."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def private_uses(module: Module) -> Iterator[tuple[int, str, str]]:
    """(line, owner module, private name) for each private name of another module it uses."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            source = resolve_from(module, node)
            if source not in MODULES:
                continue
            for alias in node.names:
                if is_private(alias.name) and f"{source}.{alias.name}" not in MODULES:
                    yield node.lineno, source, alias.name
    bindings = module_bindings(module)
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Attribute) or (parts := dotted(node)) is None:
            continue
        if parts[0] not in bindings:
            continue
        owner = bindings[parts[0]]
        for attr in parts[1:]:  # walk down submodules: a.b.c._x
            if f"{owner}.{attr}" in MODULES:
                owner = f"{owner}.{attr}"
                continue
            if attr == parts[-1] and is_private(attr):
                yield node.lineno, owner, attr
            break


def crossing_private_uses(module: Module) -> list[tuple[int, str, str]]:
    return [
        (line, owner, name)
        for line, owner, name in private_uses(module)
        if MODULES[owner].subpackage != module.subpackage
    ]


def cross_subpackage_private_uses() -> list[str]:
    return sorted(
        {
            f"{module.rel}:{line} uses {short(owner)}.{name}"
            for module in MODULES.values()
            for line, owner, name in crossing_private_uses(module)
        }
    )


def test_the_private_name_checker_sees_imports_and_attributes() -> None:
    tree = ast.parse(
        "from .._core.keys import _HEX, public\n"
        "from .._core import observe as _observe, keys\n"
        "from . import claims as _claims\n"
        "from .state import _inside\n"
        "import jeevesagent.runtime._core.values\n"
        "_observe._scope(1)\n"
        "keys.fine\n"
        "jeevesagent.runtime._core.values._MARK\n"
        "_claims._held\n"  # the same subpackage: allowed
    )
    probe = Module("jeevesagent.runtime._journaled.probe", Path("probe.py"), False, tree, 9)
    every = sorted((short(owner), name) for _, owner, name in private_uses(probe))
    assert every == [
        ("_core.keys", "_HEX"),
        ("_core.observe", "_scope"),
        ("_core.values", "_MARK"),
        ("_journaled.claims", "_held"),
        ("_journaled.state", "_inside"),
    ]
    crossing = sorted((short(owner), name) for _, owner, name in crossing_private_uses(probe))
    assert crossing == every[:3]


def test_no_private_name_used_across_subpackages() -> None:
    violations = cross_subpackage_private_uses()
    assert violations == [], "private names used across subpackages:\n" + "\n".join(violations)


def class_private_names() -> dict[str, set[str]]:
    """Private attribute name -> subpackages whose classes define it (a method, a class-level
    annotation or assignment, or ``self._x = ...``)."""
    owners: dict[str, set[str]] = {}
    for module in MODULES.values():
        for cls in ast.walk(module.tree):
            if not isinstance(cls, ast.ClassDef):
                continue
            names = set()
            for item in cls.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    names.update(t.id for t in item.targets if isinstance(t, ast.Name))
            for node in ast.walk(cls):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    names.add(node.attr)
            for name in filter(is_private, names):
                owners.setdefault(name, set()).add(module.subpackage)
    return owners


def foreign_names(module: Module) -> set[str]:
    """Local names bound by importing something from outside the package (``os``, ``anyio``)."""
    names: set[str] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            names.update(
                (a.asname or a.name).partition(".")[0]
                for a in node.names
                if a.name.partition(".")[0] != "jeevesagent"
            )
        elif (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and (node.module or "").partition(".")[0] != "jeevesagent"
        ):
            names.update(a.asname or a.name for a in node.names)
    return names


def cross_subpackage_private_attributes() -> list[str]:
    """``obj._x`` where ``_x`` is a private attribute only classes of other subpackages define.

    ``self._x`` and ``cls._x`` are left out (a subclass using what its base keeps for it). A
    heuristic, since the type of ``obj`` is unknown: a name that classes of the module's own
    subpackage define too is not reported."""
    owners = class_private_names()
    found = set()
    for module in MODULES.values():
        foreign = foreign_names(module)
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Attribute) or node.attr not in owners:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in foreign:
                continue
            if module.subpackage not in owners[node.attr]:
                where = ", ".join(sorted(short(s) for s in owners[node.attr]))
                found.add(
                    f"{module.rel}:{node.lineno} uses {ast.unparse(node)} (defined in {where})"
                )
    return sorted(found)


def test_no_private_attribute_of_another_subpackages_class_is_used() -> None:
    violations = cross_subpackage_private_attributes()
    assert violations == [], "private attributes used across subpackages:\n" + "\n".join(violations)


def defined_names(module: Module) -> set[str]:
    names: set[str] = set()
    for node in module.tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
    return names


@pytest.mark.parametrize(("module", "name"), PICKLED_PATHS, ids=lambda v: v)
def test_names_pickled_into_journals_keep_their_paths(module: str, name: str) -> None:
    assert name in defined_names(MODULES[module]), f"{module}.{name} is gone; journals name it"


# -- (d) docstrings --------------------------------------------------------------------------------


def test_every_module_has_a_docstring() -> None:
    missing = [m.rel for m in MODULES.values() if not (ast.get_docstring(m.tree) or "").strip()]
    assert missing == [], f"modules without a docstring: {missing}"


# -- (f) tests use the public store contract -------------------------------------------------------


def store_classes() -> dict[str, ast.ClassDef]:
    """The store classes of the package: a class named ``*Store`` or ``*Backend``, or one
    deriving from such a class (by the name it is written with)."""
    classes = {
        node.name: node
        for module in MODULES.values()
        for node in ast.walk(module.tree)
        if isinstance(node, ast.ClassDef)
    }

    def is_store(node: ast.ClassDef, seen: frozenset[str] = frozenset()) -> bool:
        if node.name.endswith(("Store", "Backend")):
            return True
        for base in node.bases:
            parts = dotted(base)
            if (
                parts
                and parts[-1] in classes
                and parts[-1] not in seen
                and is_store(classes[parts[-1]], seen | {node.name})
            ):
                return True
        return False

    return {name: node for name, node in classes.items() if is_store(node)}


def private_store_methods() -> set[str]:
    return {
        item.name
        for cls in store_classes().values()
        for item in cls.body
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and is_private(item.name)
    }


def private_store_calls_in_tests() -> list[str]:
    methods = private_store_methods()
    found = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in methods
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "self")
            ):
                found.append(
                    f"{path.relative_to(ROOT).as_posix()}:{node.lineno} .{node.func.attr}("
                )
    return found


def test_the_store_classes_are_found() -> None:
    names = set(store_classes())
    assert {"InMemoryJournalStore", "SqliteJournalStore", "PostgresJournalStore"} <= names
    assert "JournalBackend" in names
    assert private_store_methods(), "the stores have private helpers; the checker must see them"


def test_tests_call_no_private_store_method() -> None:
    calls = private_store_calls_in_tests()
    assert calls == [], "tests call private store methods:\n" + "\n".join(calls)


# The modules that may use asyncio itself, each with its reason ("Both event loops, always":
# everything else goes through anyio, so it runs unchanged under trio).
ASYNCIO_ALLOWED = {
    "jeevesagent.runtime._backends.thread": "wakes an asyncio loop from the store's thread",
    "jeevesagent.runtime._backends.pgbridge": "asyncpg's loop, in a thread under trio",
    "jeevesagent.runtime._backends.pglisten": "asyncpg's LISTEN connection, on asyncpg's loop",
    "jeevesagent.runtime._backends.pgopen": "batches of asyncpg calls, on asyncpg's loop",
    "jeevesagent.runtime._backends.postgres": "asyncpg's pool and its loop",
    "jeevesagent.runtime._dbos.bridge": "DBOS is asyncio-only (refuses trio)",
    "jeevesagent.runtime._dbos.runtime": "DBOS is asyncio-only (refuses trio)",
    "jeevesagent.runtime._temporal.store": "temporalio is asyncio-only (refuses trio)",
    "jeevesagent.runtime._integrations.pydantic_ai": "pydantic-ai's durable agents run on asyncio",
}


def _imports_asyncio(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name == "asyncio" or a.name.startswith("asyncio.") for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncio":
            return True
    return False


def test_asyncio_is_used_only_behind_a_driver_or_sdk_that_forces_it() -> None:
    using = {name for name, m in load_modules().items() if _imports_asyncio(m.tree)}
    assert using - ASYNCIO_ALLOWED.keys() == set(), (
        "these modules use asyncio directly; go through anyio (or, for an asyncio-only driver, "
        "put the code behind its adapter and list it here with the reason)"
    )
    assert ASYNCIO_ALLOWED.keys() - using == set(), "no longer uses asyncio: drop it from the list"
