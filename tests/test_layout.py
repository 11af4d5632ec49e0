"""The architecture holds: which part may import which, no import cycles,
and one application's state never leaks into another's."""
import ast

import pytest

from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, ROOT, make_entry

# part -> the parts it may import (besides itself). A part is a sub-package
# of logsvc, a top-level module of logsvc, or `schemas`.
ALLOWED = {
    "logsvc.entry": set(),
    "logsvc.config": set(),
    "logsvc.runtime": set(),
    "logsvc.testing": set(),
    "logsvc.worker": set(),
    "logsvc.store": {"logsvc.entry", "logsvc.config", "logsvc.runtime"},
    "logsvc.access": {"logsvc.store", "logsvc.entry", "logsvc.config", "logsvc.runtime"},
    "schemas": {"logsvc.entry", "logsvc.store", "logsvc.access"},
    "logsvc.api": {"logsvc.store", "logsvc.access", "logsvc.entry", "logsvc.config", "schemas",
                   "logsvc", "logsvc.runtime", "logsvc.alerting"},
    "logsvc.alerting": {"logsvc.store", "logsvc.runtime", "logsvc.config"},
    "logsvc.syslogd": {"logsvc.store", "logsvc.runtime", "logsvc.capture"},
    "logsvc.capture": {"logsvc.entry"},
    "logsvc.client": {"logsvc.entry", "logsvc.capture"},
    "logsvc.server": {"logsvc.api", "logsvc.store", "logsvc.access", "logsvc.config",
                      "logsvc.runtime", "logsvc.alerting", "logsvc.syslogd"},
    "logsvc.demo": {"logsvc.server", "logsvc.capture", "logsvc.access", "logsvc.store",
                    "logsvc.config"},
    "logsvc.cli": {"logsvc.store", "logsvc.access", "logsvc.client", "logsvc.config",
                   "logsvc.demo"},
    "logsvc.sealer": {"logsvc.server", "logsvc.store"},
    "logsvc.__main__": {"logsvc.cli"},
    "logsvc": set(),
}
# The one bridge from a tool into the store: the sink that writes locally.
EXCEPTIONS = {"logsvc.capture.local": {"logsvc.store"}}


def modules():
    for path in sorted((ROOT / "logsvc").rglob("*.py")) + sorted((ROOT / "schemas").glob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        yield ".".join(parts), is_package, path


def imports(name, is_package, path):
    """Every module named by an import in the file, wherever it stands
    (imports inside functions count: they are still dependencies)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def part_of(module):
    if module == "schemas" or module.startswith("schemas."):
        return "schemas"
    for part in sorted(ALLOWED, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    return None


GRAPH = {name: {target for target in imports(name, is_package, path)
                if target.split(".")[0] in ("logsvc", "schemas", "app", "wsgi")}
         for name, is_package, path in modules()}


@pytest.fixture(autouse=True)
def engine():
    """Overrides conftest's: these tests read source, not a store."""
    return None


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_each_module_imports_only_the_parts_its_part_may(module):
    own = part_of(module)
    allowed = ALLOWED[own] | {own} | EXCEPTIONS.get(module, set())
    refused = sorted(target for target in GRAPH[module]
                     if part_of(target) not in allowed and target != "logsvc")
    assert not refused, f"{module} ({own}) may not import {refused}"


def test_the_package_never_imports_the_root_scripts():
    offenders = sorted(name for name, targets in GRAPH.items()
                       if {"app", "wsgi"} & {t.split(".")[0] for t in targets})
    assert offenders == []


def test_there_are_no_import_cycles_between_modules():
    known = set(GRAPH)

    def edges(name):
        # `from pkg import mod` names the module pkg.mod: keep only real modules.
        return {t for t in GRAPH[name] if t in known and t != name}

    def package_of(name):
        return {p for p in known if name.startswith(p + ".")}

    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = trail[trail.index(name):] + [name]
            # A package importing its own sub-module (re-exports) is not a cycle.
            if not all(b.startswith(a + ".") or a in package_of(b) or b in package_of(a)
                       for a, b in zip(cycle, cycle[1:])):
                raise AssertionError(" -> ".join(cycle))
            return
        state[name] = "open"
        for target in sorted(edges(name)):
            visit(target, trail + [name])
        state[name] = "done"

    for name in sorted(known):
        visit(name, [])


def test_two_applications_in_one_process_each_keep_their_own_store(tmp_path, make_app):
    first = make_app(data_dir=tmp_path / "one").test_client()
    second = make_app(data_dir=tmp_path / "two").test_client()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    first.post(INGEST, json=[make_entry(i) for i in range(3)], headers=admin)
    second.post(INGEST, json=[make_entry(i) for i in range(5)], headers=admin)
    first.post(INGEST, json=[make_entry(9)], headers=admin)
    assert first.get(LOGS, headers=admin).json["total"] == 4
    assert second.get(LOGS, headers=admin).json["total"] == 5
    assert first.get(LOGS + "/stats", headers=admin).json["total"] == 4
    assert (tmp_path / "one" / "logs.db").exists() and (tmp_path / "two" / "logs.db").exists()
