"""Wall time of ``medsynth fit --config experiments/phantom/<method>.yaml --trainer.fast_dev_run true``.

The command a user runs to check a config (issue: "fast_dev_run that is fast", under a minute on
2 cores for every config), with the config's own data settings: unlike
tests/test_fast_dev_run.py, which cuts the phantom to one 4-slice volume, this times the phantom
generation too. Each run is a fresh process in a temporary folder (nothing is written to the
repository); the SDM fine-tune stage gets an untrained SDM checkpoint to start from. Prints one
Markdown row per config (seconds, exit status) and exits 1 if any run fails.

    python benchmarks/fast_dev_run.py                      # every phantom method config
    python benchmarks/fast_dev_run.py --configs sdm spade  # some of them
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHANTOM = ROOT / "experiments" / "phantom"
SDM_INIT = "runs/phantom/sdm/checkpoints/last.ckpt"


def method_configs(names: list[str] | None) -> list[Path]:
    """Method configs (files starting with "_" are shared pieces, not runs)."""
    found = sorted(p for p in PHANTOM.glob("*.yaml") if not p.name.startswith("_"))
    if not names:
        return found
    by_name = {p.stem: p for p in found}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {sorted(by_name)}")
    return [by_name[n] for n in names]


def write_untrained_sdm(cwd: Path) -> None:
    """The fine-tune stage loads the SDM stage's checkpoint; give it an untrained one."""
    import torch

    from medsynth.cli import lightning_cli

    cli = lightning_cli(["--config", str(PHANTOM / "sdm.yaml"), "--trainer.accelerator", "cpu"], run=False)
    path = cwd / SDM_INIT
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": cli.model.state_dict()}, path)


def time_config(config: Path, medsynth: str) -> tuple[float, int, str]:
    with tempfile.TemporaryDirectory(prefix="fdr_") as tmp:
        cwd = Path(tmp)
        if SDM_INIT in config.read_text():
            write_untrained_sdm(cwd)
        cmd = [medsynth, "fit", "--config", str(config), "--trainer.fast_dev_run", "true"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] if proc.returncode else []
    return seconds, proc.returncode, " ".join(tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=None, help="config stems (default: all)")
    p.add_argument("--limit", type=float, default=60.0, help="seconds a run may take (the issue's minute)")
    a = p.parse_args(argv)
    medsynth = str(Path(sys.executable).with_name("medsynth"))
    if not os.path.exists(medsynth):
        raise SystemExit(f"no medsynth entry point beside {sys.executable}; run `make install` first")
    failed = 0
    print(f"| config | seconds | under {a.limit:.0f} s |\n|---|---|---|", flush=True)
    for config in method_configs(a.configs):
        seconds, rc, tail = time_config(config, medsynth)
        ok = rc == 0 and seconds < a.limit
        failed += not ok
        note = "" if rc == 0 else f" (exit {rc}: {tail})"
        print(f"| {config.stem} | {seconds:.1f}{note} | {'yes' if ok else 'no'} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
