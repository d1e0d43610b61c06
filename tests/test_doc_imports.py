"""Every Python name the docs give (``medsynth.a.b`` in README.md and docs/, and the names of each
``from medsynth.x import a, b``) imports: a module moved or a name renamed fails here, not for
a reader."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOTTED = re.compile(r"(?<![\w/.-])(medsynth(?:\.[A-Za-z_]\w*)+)")
FROM_IMPORT = re.compile(r"from (medsynth(?:\.\w+)*) import ([\w, ]+)")
#: api.md's worked example of adding a method defines these in a module the reader writes.
EXAMPLE = {
    "medsynth.models.ConcatEdgeDDPM",
    "medsynth.models.concat_edge",
    "medsynth.models.concat_edge.ConcatEdgeDDPM",
}


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` is a module, or a module's attribute (chain), that imports."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def documented_names(text: str) -> set[str]:
    names = set(DOTTED.findall(text))
    for module, items in FROM_IMPORT.findall(text):
        names |= {f"{module}.{item.strip()}" for item in items.split(",") if item.strip()}
    return names


def test_the_checker() -> None:
    """The names medsynth.synthesis held before the commands moved out: ``main`` is gone (it is
    ``medsynth.commands.synthesize.main``), ``read_label_case`` is still importable there."""
    text = "call `medsynth.synthesis.main` or\nfrom medsynth.synthesis import read_label_case, load_model\n"
    assert documented_names(text) == {
        "medsynth.synthesis",
        "medsynth.synthesis.main",
        "medsynth.synthesis.read_label_case",
        "medsynth.synthesis.load_model",
    }
    assert not resolves("medsynth.synthesis.main") and resolves("medsynth.commands.synthesize.main")
    assert resolves("medsynth.synthesis.read_label_case") and resolves("medsynth.io.read_label_case")
    assert not resolves("medsynth.nothere")


def test_documented_python_names_import() -> None:
    missing = [
        f"{doc.relative_to(ROOT)}: {name}"
        for doc in DOCS
        for name in sorted(documented_names(doc.read_text()) - EXAMPLE)
        if not resolves(name)
    ]
    assert missing == []
