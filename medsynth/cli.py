"""The ``medsynth`` command line (placeholder until the CLI issue lands: prints help)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print("usage: medsynth {fit,validate,test,predict,synthesize,evaluate,phantom,demo} ...")
    return 0 if not argv or argv[0] in ("-h", "--help") else 2
