"""The direction of imports (architecture.md), over the transitive import graph.

Each third-party library is imported in one module; the supervisor, with everything it
imports (and they import), is free of the simulation, the uplink, the storage, the device
child and every third-party library but yaml and sdnotify; the models are free of the agent
but for its leaf modules of plain data. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "c8ysim"
THIRD_PARTY_HOME = {
    "paho": "c8ysim.uplink.transport",
    "yaml": "c8ysim.config",
    "bottle": "c8ysim.status.app",
    "sdnotify": "c8ysim.notify",
    "psycopg2": "c8ysim.storage.postgres",
}
LEAF_MODULES = {"c8ysim.exits": set(), "c8ysim.kinds": set(), "c8ysim.heartbeat": set(),
                "c8ysim.site": {"c8ysim.kinds"}}  # leaf: imports no more than this of c8ysim


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def graph() -> dict[str, set[str]]:
    """{module: the modules and third-party top-level names it imports directly}."""
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names
                          if f"{node.module}.{alias.name}" in known}
        edges[module_name(path)] = {_resolve(name, known) for name in names}
    return edges


def _resolve(name: str, known: set[str]) -> str:
    """A c8ysim module name as imported, or a third-party/standard top-level name."""
    return name if name in known else name.split(".")[0]


def closure(module: str) -> set[str]:
    """Every module `module` imports, directly or through others (packages included: their
    __init__ runs first)."""
    seen, stack = set(), [module]
    while stack:
        current = stack.pop()
        for name in graph().get(current, set()) | _parents(current):
            if name not in seen:
                seen.add(name)
                stack.append(name)
    return seen


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))} & set(graph())


def third_party(names) -> set[str]:
    return {n for n in names if not n.startswith("c8ysim") and n not in sys.stdlib_module_names
            and n != "__future__"}


def test_the_graph_sees_lazy_and_from_imports():
    edges = graph()
    assert "c8ysim.device" in edges["c8ysim.main"]  # imported inside run()
    assert "c8ysim.status.cli" in edges["c8ysim.main"]  # `from c8ysim.status import cli`
    assert "c8ysim.sim.household" in closure("c8ysim.sim")  # build_model's lazy import
    assert "c8ysim.kinds" in closure("c8ysim.config")  # through c8ysim.site


def test_each_third_party_library_is_imported_in_one_module():
    for module, names in graph().items():
        for library in third_party(names):
            assert THIRD_PARTY_HOME.get(library) == module, \
                f"{module} imports {library}; only {THIRD_PARTY_HOME.get(library)} may"


@pytest.mark.parametrize("forbidden", ["c8ysim.sim", "c8ysim.uplink", "c8ysim.storage",
                                       "c8ysim.device", "c8ysim.backfill"])
def test_the_supervisor_never_imports_device_side_modules(forbidden):
    reached = closure("c8ysim.supervisor")
    assert not [m for m in reached if m == forbidden or m.startswith(forbidden + ".")]


def test_the_supervisor_imports_no_third_party_library_but_yaml_and_sdnotify():
    assert third_party(closure("c8ysim.supervisor")) == {"yaml", "sdnotify"}


def test_the_models_import_nothing_of_the_agent_but_its_leaf_modules():
    for module in graph():
        if module.startswith("c8ysim.sim"):
            outside = {m for m in closure(module) if m.startswith("c8ysim")
                       and not m.startswith("c8ysim.sim")} - {"c8ysim"}
            assert outside <= set(LEAF_MODULES), (module, outside)
            assert not third_party(closure(module)), module


def test_leaf_modules_are_leaves():
    for module, allowed in LEAF_MODULES.items():
        inside = {m for m in graph()[module] if m.startswith("c8ysim")}
        assert inside <= allowed, (module, inside)
        assert not third_party(graph()[module]), module


def test_smartrest_is_standard_library_only():
    assert {m for m in closure("c8ysim.uplink.smartrest") if m.startswith("c8ysim")} <= {
        "c8ysim", "c8ysim.uplink"}
    assert not third_party(closure("c8ysim.uplink.smartrest"))


def test_a_forbidden_import_two_steps_away_is_caught(monkeypatch):
    """The check walks the graph: config importing the storage would be found."""
    edges = {k: set(v) for k, v in graph().items()}
    edges["c8ysim.config_checks"].add("c8ysim.storage.sqlite")
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: edges)
    assert "c8ysim.storage.sqlite" in closure("c8ysim.supervisor")


# What no process of the agent loads, and why (issue 18):
UNLOADED = (
    # on Python 3.11 `dataclasses` imports `inspect` (with ast, dis and tokenize), and
    # defining a frozen dataclass execs six generated methods: ~25 ms of the start
    "dataclasses", "inspect",
    # OpenSSL's libcrypto (~3.5 MB of the supervisor's pages, 3 ms): our two digests come
    # from Python's _sha256 and _blake2, a temp-file tag from os.urandom (secrets: hmac)
    "hashlib", "_hashlib", "secrets",
    # argparse imports shutil for the terminal's width, and shutil bz2 and lzma (~4 ms)
    "shutil", "bz2", "lzma",
    # smartrest needs Decimal only for numbers in exponent form (_decimal: ~0.25 MB, 2 ms)
    "decimal",
)


def test_the_agent_loads_none_of_the_modules_it_avoids():
    """Every module of the agent but `__main__`, those that import bottle or psycopg2 (the
    status app and the PostgreSQL store, imported when first needed) and those only they
    import (the page's html), imported in a fresh interpreter, with the command line's
    parser built as `c8ysim run` builds it, loads none of UNLOADED (the README, under
    Layout)."""
    later = {m for m in graph() if {"bottle", "psycopg2"} & graph()[m]}
    imported_by_the_rest = {name for m in set(graph()) - later for name in graph()[m]}
    modules = sorted(m for m in graph() if m not in later and not m.endswith("__main__")
                     and (m in imported_by_the_rest or m == "c8ysim.main"))
    assert "c8ysim.status.html" not in modules and "c8ysim.status.view" in modules
    assert "c8ysim.main" in modules and "c8ysim.device" in modules and "c8ysim.config" in modules
    code = (f"import sys\nimport {', '.join(modules)}\n"
            "c8ysim.main._parser().parse_args(['run'])\n"
            f"print(' '.join(m for m in {sorted(UNLOADED)!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"loaded: {result.stdout.strip()}"


@pytest.mark.parametrize("columns, width", [("40", 40), ("132", 132), ("abc", 80), ("0", 80),
                                            ("-3", 80), ("", 80), ("9" * 30, int("9" * 30))])
def test_help_takes_the_width_from_columns_or_falls_back_to_80(monkeypatch, columns, width):
    """The parser's own width lookup (argparse's goes through shutil), as shutil's: $COLUMNS
    when it is a positive number, else stdout's terminal (none under pytest), else 80; the
    help of every subcommand is formatted to it (argparse leaves 2 columns free)."""
    from c8ysim import main

    monkeypatch.setenv("COLUMNS", columns)
    assert main._terminal_columns() == width
    parser = main._parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for sub in [parser, *commands.values()]:
        assert sub._get_formatter()._width == width - 2, sub.prog
        assert sub.format_help().startswith("usage: c8ysim")
