"""The package's layering, read from the source (every import, those inside functions included).

- The library (everything under medsynth/ but ``medsynth/commands/``, ``medsynth/cli.py`` and the
  ``python -m medsynth`` entry ``medsynth/__main__.py``) imports neither ``argparse`` nor
  ``medsynth.cli`` / ``medsynth.commands``: commands call the library, never the other way.
- A command module imports no private (``_name``) part of another command module.
- No import circle among medsynth's modules.

The checker is itself tested on the layout these rules replaced: synthesis.py, masks.py,
evaluate.py, demo.py and autolabel.py each imported ``argparse`` and, inside ``_parser()``,
``from medsynth.cli import HelpFormatter``, while cli.py imported their ``main``: a circle of six
modules (``test_checker_catches_the_earlier_layout`` runs the rules on those import lines). Run
over the whole package of 93e3450, the scan reports 15 forbidden imports in those five modules and
the circle ``autolabel, cli, demo, evaluate, masks, synthesis``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medsynth"
COMMANDS = "medsynth.commands"
#: The command layer: what may parse command lines and import the commands.
COMMAND_LAYER = ("medsynth.cli", "medsynth.__main__", COMMANDS)
FORBIDDEN_IN_LIBRARY = ("argparse", "medsynth.cli", COMMANDS)


def module_name(path: Path) -> str:
    """``medsynth/data/phantom.py`` -> ``medsynth.data.phantom``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for every import of ``source`` (module ``module``), at any depth.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a module); relative imports
    are resolved against ``module``; ``importlib.import_module("x")`` with a literal counts too.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layout_problems(source: str, module: str, is_package: bool = False) -> list[str]:
    """What ``source`` (module ``module``) breaks of the rules in this file's docstring."""
    problems = []
    command_layer = any(_within(module, m) for m in COMMAND_LAYER)
    for line, name in imports(source, module, is_package):
        if not command_layer and any(_within(name, f) for f in FORBIDDEN_IN_LIBRARY):
            problems.append(f"{module}:{line}: the library imports {name}")
        if _within(module, COMMANDS) and _within(name, COMMANDS):
            parts = name[len(COMMANDS) + 1 :].split(".") if name != COMMANDS else []
            other = f"{COMMANDS}.{parts[0]}" if parts else COMMANDS
            if other != module and any(p.startswith("_") for p in parts[1:]):
                problems.append(f"{module}:{line}: imports the private {name} of another command")
    return problems


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def package_sources() -> dict[str, tuple[str, bool]]:
    """``{module: (source, is_package)}`` of every module under medsynth/."""
    return {module_name(p): (p.read_text(), p.name == "__init__.py") for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph(sources: Mapping[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module -> the medsynth modules it imports (at any depth in the file)."""
    return {
        m: {n for _, n in imports(src, m, pkg) if n in sources and n != m}
        for m, (src, pkg) in sources.items()
    }


# The import lines of medsynth/synthesis.py as they were before the commands moved out (93e3450).
EARLIER_SYNTHESIS = """
import argparse
import importlib
from medsynth.data.transforms import load_nifti
from medsynth.models.base import SynthesisModule

def _parser() -> argparse.ArgumentParser:
    from medsynth.cli import HelpFormatter
"""


def test_checker_catches_the_earlier_layout() -> None:
    """The earlier synthesis.py breaks the library rule twice, each found with its line (the second
    inside a function); a relative import, ``from medsynth import commands`` and ``import_module``
    count too; a command reaching into another's private names is caught, its common module is
    not; and the earlier cli <-> library edges make a circle."""
    assert layout_problems(EARLIER_SYNTHESIS, "medsynth.synthesis") == [
        "medsynth.synthesis:2: the library imports argparse",
        "medsynth.synthesis:8: the library imports medsynth.cli",
        "medsynth.synthesis:8: the library imports medsynth.cli.HelpFormatter",
    ]
    assert layout_problems("from .. import cli", "medsynth.data.phantom") == [
        "medsynth.data.phantom:1: the library imports medsynth.cli"
    ]
    assert layout_problems("from medsynth import commands", "medsynth.demo") == [
        "medsynth.demo:1: the library imports medsynth.commands"
    ]
    dynamic = "import importlib\nimportlib.import_module('medsynth.commands.masks')"
    assert layout_problems(dynamic, "medsynth.evaluate") == [
        "medsynth.evaluate:2: the library imports medsynth.commands.masks"
    ]
    assert layout_problems(EARLIER_SYNTHESIS, "medsynth.commands.synthesize") == []
    private = "from medsynth.commands.masks import _parse_scale, build_parser"
    assert layout_problems(private, "medsynth.commands.evaluate") == [
        "medsynth.commands.evaluate:1: imports the private medsynth.commands.masks._parse_scale of another command"
    ]
    assert layout_problems(private, "medsynth.commands.masks") == []  # its own private names
    assert (
        layout_problems("from medsynth.commands.common import HelpFormatter", "medsynth.commands.label") == []
    )
    earlier = {"medsynth.cli": {"medsynth.synthesis"}, "medsynth.synthesis": {"medsynth.cli", "medsynth.io"}}
    assert import_cycles(earlier) == [["medsynth.cli", "medsynth.synthesis"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_library_holds_no_argparse_and_never_imports_a_command() -> None:
    sources = package_sources()
    assert {"medsynth.synthesis", "medsynth.commands.masks", "medsynth.io", "medsynth.nn.ema"} <= set(sources)
    problems = [p for m, (src, pkg) in sources.items() for p in layout_problems(src, m, pkg)]
    assert problems == []


def test_every_own_command_is_a_module_under_commands() -> None:
    from medsynth.cli import OWN_COMMANDS
    from medsynth.commands import COMMAND_MODULES

    sources = package_sources()
    assert set(OWN_COMMANDS) - {"version"} == set(COMMAND_MODULES)
    for command, module in COMMAND_MODULES.items():
        assert module == f"{COMMANDS}.{command}" and module in sources
        tree = ast.parse(sources[module][0])
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"main", "build_parser"} <= defined, module


def test_no_import_circle() -> None:
    """Every import between medsynth's modules, those inside functions included, points one way."""
    assert import_cycles(import_graph(package_sources())) == []
