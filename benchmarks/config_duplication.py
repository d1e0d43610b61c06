"""How much the experiment configs repeat themselves.

Of all non-comment, non-blank lines in all YAML files under experiments/, the share whose text
(stripped of indentation) occurs in more than half of those files. Lines every file repeats
(``trainer:``, the same callback block) are what a shared ``defaults`` piece should hold once.

    python benchmarks/config_duplication.py                  # experiments/ of this checkout
    python benchmarks/config_duplication.py --root some/dir --verbose
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "experiments"


def config_lines(path: Path) -> list[str]:
    """The non-comment, non-blank lines of one YAML file, stripped of surrounding whitespace."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def duplication(root: Path = ROOT) -> tuple[float, int, int, list[str]]:
    """Measure the configs under ``root``.

    Returns:
        ``(share, num_files, num_lines, repeated)``: the share of lines whose text occurs in more
        than half of the files, the file and line counts, and those repeated texts.

    Raises:
        ValueError: when ``root`` holds no YAML file.
    """
    files = sorted(root.rglob("*.yaml")) + sorted(root.rglob("*.yml"))
    if not files:
        raise ValueError(f"no YAML files under {root}")
    per_file = {f: config_lines(f) for f in files}
    in_files = Counter(text for lines in per_file.values() for text in set(lines))
    repeated = sorted(t for t, n in in_files.items() if n > len(files) / 2)
    total = sum(len(lines) for lines in per_file.values())
    dup = sum(1 for lines in per_file.values() for t in lines if t in repeated)
    return dup / max(total, 1), len(files), total, repeated


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--root", type=Path, default=ROOT, help="folder searched for *.yaml (default: experiments/)"
    )
    p.add_argument("--verbose", action="store_true", help="also list the repeated lines")
    a = p.parse_args()
    share, files, lines, repeated = duplication(a.root)
    print(
        f"| files | lines | repeated in > half the files |\n|---|---|---|\n| {files} | {lines} | {share:.0%} |"
    )
    if a.verbose:
        for text in repeated:
            print(f"  {text}")


if __name__ == "__main__":
    main()
