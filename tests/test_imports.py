"""The direction of imports (architecture.md): each third-party library in one module, the
supervisor free of anything that opens a connection, the models free of the agent."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "c8ysim"
THIRD_PARTY_HOME = {
    "paho": "c8ysim/uplink/transport.py",
    "yaml": "c8ysim/config.py",
    "bottle": "c8ysim/status/app.py",
    "sdnotify": "c8ysim/notify.py",
    "psycopg2": "c8ysim/storage/postgres.py",
}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def modules():
    root = AGENT.parent
    return {str(p.relative_to(root)): imports_of(p) for p in AGENT.rglob("*.py")}


def test_each_third_party_library_is_imported_in_one_module():
    for path, names in modules().items():
        for library, home in THIRD_PARTY_HOME.items():
            if any(n == library or n.startswith(library + ".") for n in names):
                assert path == home, f"{path} imports {library}; only {home} may"


def test_supervisor_never_imports_device_side_modules():
    names = modules()["c8ysim/supervisor.py"]
    forbidden = ("c8ysim.sim", "c8ysim.uplink", "c8ysim.storage", "c8ysim.device")
    assert not [n for n in names if n.startswith(forbidden)], names


def test_sim_imports_nothing_from_the_agent():
    for path, names in modules().items():
        if path.startswith("c8ysim/sim/"):
            outside = [n for n in names if n.startswith("c8ysim") and not n.startswith("c8ysim.sim")]
            assert not outside, (path, outside)


def test_smartrest_imports_only_the_standard_library_and_sim_types():
    names = modules()["c8ysim/uplink/smartrest.py"]
    assert not [n for n in names if n.startswith("c8ysim") and not n.startswith("c8ysim.sim")]
