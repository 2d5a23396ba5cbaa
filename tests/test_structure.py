"""Guards the package's import structure: no import cycles, no use of another module's privates.

Why: a cycle between two modules "works" only while one side imports the other lazily, inside a
function; the first refactor that moves that import to the top (or runs it during import) turns it
into an ImportError or a half-initialised module. And a module that imports another module's
``_private`` name couples itself to an implementation detail that the owner may rename or change
at any time without touching a public name. Both are easy to add by accident and hard to see in
review, so this test checks them mechanically.

How: every ``.py`` file under ``src/featuremaps`` is parsed with :mod:`ast`; no module of the
package is imported (so the test is fast and does not need torch). Rules:

- Cycles: module A -> module B when A imports B anywhere, including inside functions (a lazy import
  is still a runtime cycle), but not inside ``if TYPE_CHECKING:`` blocks (those never run). Only
  explicit imports count: the implicit import of a submodule's parent packages is left out, or
  every re-export in a package ``__init__`` would be a cycle.
- Privates: ``from featuremaps.x import _name`` and ``alias._name`` (``alias`` bound to a module of
  the package) are failures in any module other than ``featuremaps.x`` itself. Dunders such as
  ``__version__`` are not private, and importing *from* a private module (``featuremaps._errors``)
  or importing a private *submodule* is fine: only private names inside a module are guarded.
- Length: no module over ``MAX_MODULE_LINES`` lines, and the CLI under ``MAX_CLI_LINES`` (it only
  parses arguments and calls the public API). Only ``.py`` files count: the report's and the slide
  viewer's JavaScript, CSS and HTML, and vendored scripts such as ``openseadragon.min.js``, are
  assets, not modules.

The helpers take a root directory and a package name, so the self-tests at the bottom can run
them on small synthetic packages and show that the checker can fail.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "featuremaps"
SRC = PACKAGE_DIR.parent
PACKAGE = PACKAGE_DIR.name

# Cycles listed per strongly connected component; a tangle bigger than this is reported truncated.
MAX_CYCLES_PER_COMPONENT = 50
MAX_MODULE_LINES = 800  # at most
MAX_CLI_LINES = 300  # fewer than

Graph = Mapping[str, Mapping[str, int]]  # module -> {imported module: first line of the import}


# --- parsing -----------------------------------------------------------------------------------


def find_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file of ``root/package``.

    A package's ``__init__.py`` is the module named after the package (``pkg.sub``).
    """
    modules: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def is_type_checking_test(test: ast.expr) -> bool:
    """``TYPE_CHECKING``, or ``<name>.TYPE_CHECKING`` such as ``typing.TYPE_CHECKING``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return (
        isinstance(test, ast.Attribute)
        and test.attr == "TYPE_CHECKING"
        and isinstance(test.value, ast.Name)
    )


def iter_imports(
    tree: ast.AST, *, skip_type_checking: bool
) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth (functions, classes, try blocks ...), in source order.

    With ``skip_type_checking``, the body of ``if TYPE_CHECKING:`` is left out (its ``else`` runs,
    so it is kept).
    """
    yield from _imports_in(list(ast.iter_child_nodes(tree)), skip_type_checking)


def _imports_in(
    nodes: list[ast.AST], skip_type_checking: bool
) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif skip_type_checking and isinstance(node, ast.If) and is_type_checking_test(node.test):
            yield from _imports_in(list(node.orelse), skip_type_checking)
        else:
            yield from _imports_in(list(ast.iter_child_nodes(node)), skip_type_checking)


def is_private(name: str) -> bool:
    """``_name`` or ``__name`` (mangled), but not a dunder such as ``__version__``."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def longest_known(name: str, modules: Mapping[str, Path]) -> str | None:
    """``name`` itself, else its nearest enclosing module that is one of ``modules``."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def from_base(node: ast.ImportFrom, module: str, path: Path) -> str | None:
    """The absolute module named by ``from <base> import ...``, resolving relative imports."""
    if node.level == 0:
        return node.module
    # The package a relative import starts from: the module itself for an __init__, else its parent.
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    if not base:
        return None  # climbs above the top-level package: not ours
    return f"{base}.{node.module}" if node.module else base


def imported_modules(
    node: ast.Import | ast.ImportFrom, module: str, path: Path, modules: Mapping[str, Path]
) -> list[str]:
    """The package modules that ``node`` (a statement in ``module``) imports explicitly.

    ``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``. Parent packages that
    Python imports implicitly on the way are not included.
    """
    found: list[str] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            target = longest_known(alias.name, modules)
            if target is not None:
                found.append(target)
        return found
    base = from_base(node, module, path)
    if base is None:
        return found
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        target = submodule if submodule in modules else longest_known(base, modules)
        if target is not None:
            found.append(target)
    return found


# --- check 1: import cycles --------------------------------------------------------------------


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {module it imports: first line}, over runtime imports (no ``TYPE_CHECKING``)."""
    modules = find_modules(root, package)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module, path in modules.items():
        for node in iter_imports(parse(path), skip_type_checking=True):
            for target in imported_modules(node, module, path, modules):
                if target != module:
                    edges = graph[module]
                    edges[target] = min(edges.get(target, node.lineno), node.lineno)
    return graph


def strongly_connected_components(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm; each component sorted, components in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, {})):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def _cycles_through(graph: Graph, start: str, allowed: set[str]) -> Iterator[list[str]]:
    """Simple cycles ``start -> ... -> start`` whose other nodes are all in ``allowed``."""
    path = [start]

    def extend(node: str) -> Iterator[list[str]]:
        for succ in sorted(graph.get(node, {})):
            if succ == start:
                yield [*path, start]
            elif succ in allowed and succ not in path:
                path.append(succ)
                yield from extend(succ)
                path.pop()

    yield from extend(start)


def find_cycles(graph: Graph) -> list[list[str]]:
    """Every simple cycle, each as ``[a, b, ..., a]`` starting at its smallest module name."""
    cycles: list[list[str]] = []
    for component in strongly_connected_components(graph):
        if len(component) < 2:
            continue  # self-imports are not recorded as edges
        found: list[list[str]] = []
        for i, start in enumerate(component):
            # Each cycle is found once: from its smallest node, through larger nodes only.
            found.extend(_cycles_through(graph, start, set(component[i + 1 :])))
        cycles.extend(itertools.islice(found, MAX_CYCLES_PER_COMPONENT))
    return cycles


def format_cycles(cycles: list[list[str]], graph: Graph) -> str:
    lines = [f"{len(cycles)} import cycle(s) between modules (TYPE_CHECKING imports excluded):"]
    for cycle in cycles:
        lines.append("  " + " -> ".join(cycle))
        for importer, imported in itertools.pairwise(cycle):
            lines.append(f"      {importer} line {graph[importer][imported]} imports {imported}")
    return "\n".join(lines)


# --- check 2: private names of other modules ---------------------------------------------------


@dataclass(frozen=True, order=True)
class PrivateUse:
    module: str  # the module that reaches in
    line: int
    owner: str  # the module the private name belongs to
    code: str  # the offending import or expression, for the message

    def __str__(self) -> str:
        return f"{self.module} line {self.line}: {self.code}  (private to {self.owner})"


def _resolve_module_expr(
    expr: ast.expr, aliases: Mapping[str, str], modules: Mapping[str, Path]
) -> str | None:
    """The package module that ``expr`` (``alias`` or ``alias.sub.sub``) names, if any."""
    if isinstance(expr, ast.Name):
        return aliases.get(expr.id)
    if isinstance(expr, ast.Attribute):
        parent = _resolve_module_expr(expr.value, aliases, modules)
        if parent is not None and f"{parent}.{expr.attr}" in modules:
            return f"{parent}.{expr.attr}"
    return None


def find_private_uses(root: Path, package: str) -> list[PrivateUse]:
    """Every import or attribute access of a private name that belongs to another module."""
    modules = find_modules(root, package)
    uses: list[PrivateUse] = []
    for module, path in modules.items():
        tree = parse(path)
        aliases: dict[str, str] = {}  # local name -> package module it is bound to
        # TYPE_CHECKING imports count here: they still tie the module to another's privates.
        for node in iter_imports(tree, skip_type_checking=False):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname is not None:
                        if alias.name in modules:
                            aliases[alias.asname] = alias.name
                    else:
                        top = alias.name.partition(".")[0]
                        if top in modules:
                            aliases[top] = top
                continue
            base = from_base(node, module, path)
            if base is None:
                continue
            owner = longest_known(base, modules)
            if owner is None:
                continue  # not our package
            for alias in node.names:
                bound = alias.asname or alias.name
                if f"{base}.{alias.name}" in modules:
                    aliases[bound] = f"{base}.{alias.name}"  # a submodule, not a private name
                elif is_private(alias.name) and owner != module:
                    code = f"from {'.' * node.level}{node.module or ''} import {alias.name}"
                    uses.append(PrivateUse(module, node.lineno, owner, code))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                owner = _resolve_module_expr(node.value, aliases, modules)
                if owner is not None and owner != module and f"{owner}.{node.attr}" not in modules:
                    uses.append(PrivateUse(module, node.lineno, owner, ast.unparse(node)))
    return sorted(uses)


def format_private_uses(uses: list[PrivateUse]) -> str:
    lines = [f"{len(uses)} use(s) of another module's private name (make it public, or move it):"]
    lines.extend(f"  {use}" for use in uses)
    return "\n".join(lines)


# --- check 3: module length --------------------------------------------------------------------


@dataclass(frozen=True)
class LongModule:
    module: str
    path: str  # relative to the source root, for the message
    lines: int
    limit: int  # the most lines allowed

    def __str__(self) -> str:
        return f"{self.module} ({self.path}): {self.lines} lines, at most {self.limit} allowed"


def line_limits(package: str) -> dict[str, int]:
    """The modules with a limit of their own (the most lines allowed): the CLI."""
    return {f"{package}.cli": MAX_CLI_LINES - 1}


def find_long_modules(
    root: Path, package: str, limits: Mapping[str, int], default: int = MAX_MODULE_LINES
) -> list[LongModule]:
    """Every module of ``root/package`` with more lines than its limit (``limits`` by dotted
    name, else ``default``), longest first. Only ``.py`` files are modules."""
    long: list[LongModule] = []
    for module, path in find_modules(root, package).items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        limit = limits.get(module, default)
        if lines > limit:
            long.append(LongModule(module, path.relative_to(root).as_posix(), lines, limit))
    return sorted(long, key=lambda m: (-m.lines, m.module))


def format_long_modules(long: list[LongModule]) -> str:
    lines = [f"{len(long)} module(s) too long (split each by its role in the flow):"]
    lines.extend(f"  {m}" for m in long)
    return "\n".join(lines)


# --- the real package --------------------------------------------------------------------------


def test_package_is_found() -> None:
    # Without this, a wrong path would make both checks below pass on zero modules.
    modules = find_modules(SRC, PACKAGE)
    assert PACKAGE in modules, f"no {PACKAGE}/__init__.py under {SRC}"
    assert len(modules) > 5, sorted(modules)


def test_no_import_cycles() -> None:
    graph = import_graph(SRC, PACKAGE)
    cycles = find_cycles(graph)
    assert not cycles, format_cycles(cycles, graph)


def test_no_private_names_of_other_modules() -> None:
    uses = find_private_uses(SRC, PACKAGE)
    assert not uses, format_private_uses(uses)


def test_no_module_is_too_long() -> None:
    long = find_long_modules(SRC, PACKAGE, line_limits(PACKAGE))
    assert not long, format_long_modules(long)


# --- self-tests of the checker on synthetic packages -------------------------------------------


def _package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    """Writes ``files`` (path relative to the root -> source) under ``tmp_path``; returns it."""
    for relative, source in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return tmp_path


def test_checker_finds_cycle_through_lazy_import(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\nfrom pkg.b import g\n",
            "pkg/a.py": """
                def f():
                    from pkg.b import g
                    return g()
            """,
            "pkg/b.py": "from pkg.a import f\n\ndef g():\n    return 1\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    message = format_cycles(find_cycles(graph), graph)
    assert "pkg.a -> pkg.b -> pkg.a" in message
    assert "pkg.a line 3 imports pkg.b" in message


def test_checker_finds_cycle_through_relative_imports(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from . import c\n",  # the submodule pkg.sub.c
            "pkg/sub/c.py": "from ..d import x\n",
            "pkg/d.py": "from .sub import c\nx = 1\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.sub"] == {"pkg.sub.c": 1}
    assert find_cycles(graph) == [["pkg.d", "pkg.sub.c", "pkg.d"]]


def test_checker_ignores_type_checking_imports_and_parent_packages(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            # Re-exports: pkg -> pkg.a, pkg.b; the implicit pkg import of a child is not an edge.
            "pkg/__init__.py": "from pkg.a import f\nfrom pkg.b import g\n",
            "pkg/a.py": """
                from __future__ import annotations
                import typing
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from pkg.b import G
                if typing.TYPE_CHECKING:
                    import pkg.b

                def f(x: G) -> pkg.b.G:
                    return x
            """,
            "pkg/b.py": "from pkg.a import f\n\nclass G: ...\n\ndef g(): ...\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {}
    assert find_cycles(graph) == []


def test_checker_flags_private_name_import(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "_x = 1\n\ndef _f(): ...\n",
            "pkg/b.py": """
                from pkg.a import _x
                import pkg.a as alias
                from pkg import a

                def g():
                    from .a import _f
                    return alias._f(), a._x, _f
            """,
        },
    )
    uses = find_private_uses(root, "pkg")
    assert [(use.module, use.line, use.code) for use in uses] == [
        ("pkg.b", 2, "from pkg.a import _x"),
        ("pkg.b", 7, "from .a import _f"),
        ("pkg.b", 8, "a._x"),
        ("pkg.b", 8, "alias._f"),
    ]
    assert "pkg.b line 2: from pkg.a import _x  (private to pkg.a)" in format_private_uses(uses)


def test_checker_allows_dunders_private_modules_and_own_privates(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "__version__ = '1'\n",
            "pkg/_errors.py": "class InputError(Exception): ...\n",
            "pkg/a.py": """
                import pkg.a as me
                from pkg import __version__, _errors
                from pkg._errors import InputError

                def _own(): ...

                def f():
                    return me._own(), _errors.InputError, InputError, __version__
            """,
        },
    )
    assert find_private_uses(root, "pkg") == []


def test_checker_flags_long_modules_and_a_long_cli(tmp_path: Path) -> None:
    def lines(n: int) -> str:
        return "".join(f"x{i} = {i}\n" for i in range(n))

    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/ok.py": lines(MAX_MODULE_LINES),
            "pkg/sub/big.py": lines(MAX_MODULE_LINES + 1),
            "pkg/cli.py": lines(MAX_CLI_LINES),
            # Assets and vendored scripts are not modules, however long.
            "pkg/static/viewer.min.js": "var a;\n" * (10 * MAX_MODULE_LINES),
            "pkg/templates/page.html": "<p>\n" * (10 * MAX_MODULE_LINES),
        },
    )
    long = find_long_modules(root, "pkg", line_limits("pkg"))
    assert [(m.module, m.lines, m.limit) for m in long] == [
        ("pkg.sub.big", MAX_MODULE_LINES + 1, MAX_MODULE_LINES),
        ("pkg.cli", MAX_CLI_LINES, MAX_CLI_LINES - 1),
    ]
    message = format_long_modules(long)
    assert "2 module(s) too long" in message
    assert "pkg.sub.big (pkg/sub/big.py): 801 lines, at most 800 allowed" in message
    assert "pkg.cli (pkg/cli.py): 300 lines, at most 299 allowed" in message
    assert find_long_modules(root, "pkg", {}, default=10 * MAX_MODULE_LINES) == []
