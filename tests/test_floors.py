"""The floors of src/studiolo hold: no import runs up a floor, api/ reaches only the service and the
domain, and the domain imports nothing but the standard library (docs/ENGINE.md, "The floors above
the engine"). Read from the source with ast, so an import inside a function counts too."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "studiolo"
FLOOR = {"domain": 0, "engine": 1, "store": 1, "chat": 1, "models": 1, "service": 2, "api": 3, "cli": 4}
# what each floor may import of the project, beside its own package and the floors below it
API_REACHES = {"api", "service", "domain", "config", "__init__"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) of each absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def _project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, package under studiolo) of each import of the project in ``path``."""
    return [(line, (name.split(".") + ["__init__"])[1]) for line, name in _imports(path)
            if name.split(".")[0] == "studiolo"]


def _third_party_imports(path: Path) -> list[tuple[int, str]]:
    return [(line, name) for line, name in _imports(path)
            if name.split(".")[0] not in sys.stdlib_module_names | {"studiolo", "__future__"}]


def _modules(floor: str) -> list[Path]:
    return sorted((SRC / floor).rglob("*.py"))


@pytest.mark.parametrize("floor", sorted(FLOOR))
def test_no_import_runs_up_a_floor(floor):
    upward = [f"{path.relative_to(SRC)}:{line} imports studiolo.{package}"
              for path in _modules(floor) for line, package in _project_imports(path)
              if FLOOR.get(package, -1) > FLOOR[floor]]
    assert not upward, "\n".join(upward)


def test_api_reaches_only_the_service_and_the_domain():
    beyond = [f"{path.relative_to(SRC)}:{line} imports studiolo.{package}"
              for path in _modules("api") for line, package in _project_imports(path)
              if package not in API_REACHES]
    assert not beyond, "\n".join(beyond)


def test_the_domain_is_standard_library_only():
    foreign = [f"{path.relative_to(SRC)}:{line} imports {name}"
               for path in _modules("domain") for line, name in _third_party_imports(path)]
    foreign += [f"{path.relative_to(SRC)}:{line} imports studiolo.{package}"
                for path in _modules("domain") for line, package in _project_imports(path) if package != "domain"]
    assert not foreign, "\n".join(foreign)
