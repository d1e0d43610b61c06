"""Slice throughput: the memory-mapped slice cache vs decoding NIfTI volumes, and peak memory.

Writes phantom volumes as an AMOS22-layout NIfTI folder, builds the slice cache with
AMOSDataModule, then measures (one process, one loader worker, ``OMP_NUM_THREADS=1``):

* cache: slices/s of shuffled batches from the cache through a DataLoader (num_workers=0);
* decode (random): slices/s when every batch of random slices decodes the volumes it needs
  (NIfTI read + orientation + body mask + window + resize), the no-cache loader;
* decode (sequential): slices/s when a decoded volume yields all its slices (no-cache best case);
* memory, per dataset size in a fresh process: peak RSS (VmHWM), and after a full epoch from
  the cache the anonymous RSS (process memory) and file-backed RSS (page-cache pages of the
  memory maps, shared and reclaimable by the kernel).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/data_throughput.py --cases 4 8 16 --depth 32 --image-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _datamodule(root: Path, cache: Path, n: int, image_size: int, batch_size: int):
    from medsynth.data import AMOSDataModule

    return AMOSDataModule(
        root,
        image_size=image_size,
        batch_size=batch_size,
        num_workers=0,
        cache_dir=cache,
        max_train_cases=n,
        max_val_cases=0,
        max_test_cases=0,
        progress=False,
    )


def memory_child(root: str, cache: str, n: int, image_size: int, batch_size: int) -> dict:
    """Run in a fresh process: open the cache for ``n`` cases, read one full epoch, report memory."""
    import torch

    torch.set_num_threads(1)
    dm = _datamodule(Path(root), Path(cache), n, image_size, batch_size)
    dm.setup("fit")
    after_setup = _status_kb("VmRSS")
    slices, t0 = 0, time.perf_counter()
    for batch in dm.train_dataloader():
        slices += len(batch["slice_index"])
    dt = time.perf_counter() - t0
    return {
        "cases": n,
        "slices": slices,
        "epoch_slices_per_s": slices / dt,
        "rss_after_setup_mb": after_setup / 1024,
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
        "anon_rss_mb": _status_kb("RssAnon") / 1024,
        "file_rss_mb": _status_kb("RssFile") / 1024,
        "dataset_mb": slices * image_size * image_size * 3 / 2**20,  # float16 image + uint8 mask
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, nargs="+", default=[4, 8, 16], help="dataset sizes (volumes)")
    parser.add_argument("--depth", type=int, default=32, help="slices per volume")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--phantom-size", type=int, default=256, help="in-plane matrix of the NIfTI volumes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache-batches", type=int, default=200, help="batches timed from the cache")
    parser.add_argument("--decode-batches", type=int, default=2, help="batches timed by decoding")
    parser.add_argument("--workdir", type=str, default=None, help="default: a temporary folder")
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        root, cache, n = args.child.split("|")
        print(json.dumps(memory_child(root, cache, int(n), args.image_size, args.batch_size)))
        return

    import torch

    torch.set_num_threads(1)
    from medsynth.data.phantom import write_phantom_dataset
    from medsynth.data.transforms import PreprocessConfig, load_case

    work = Path(args.workdir or tempfile.mkdtemp(prefix="medsynth_bench_"))
    root, cache = work / "amos", work / "cache"
    n_max = max(args.cases)
    t0 = time.perf_counter()
    if not (root / "dataset.json").is_file():
        write_phantom_dataset(root, num_train=n_max, num_val=0, depth=args.depth, size=args.phantom_size)
    t_write = time.perf_counter() - t0
    dm = _datamodule(root, cache, n_max, args.image_size, args.batch_size)
    t0 = time.perf_counter()
    dm.prepare_data()
    t_build = time.perf_counter() - t0
    dm.setup("fit")
    ds = dm.datasets["train"]
    print(f"# {n_max} phantom volumes {args.phantom_size}x{args.phantom_size}x{args.depth} in {work}")
    print(f"# wrote NIfTI in {t_write:.1f} s; built the cache in {t_build:.1f} s ({len(ds)} slices)")

    # Cache: shuffled batches through the DataLoader, one process.
    loader = dm.train_dataloader()
    n_slices, t0, it = 0, time.perf_counter(), iter(loader)
    for _ in range(args.cache_batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n_slices += len(batch["slice_index"])
    cache_rate = n_slices / (time.perf_counter() - t0)

    # Decoding: each batch of random slices decodes the volumes it touches.
    config = PreprocessConfig(image_size=args.image_size)
    cases = dm.splits["train"]
    rng = np.random.default_rng(0)
    n_slices, t0 = 0, time.perf_counter()
    for _ in range(args.decode_batches):
        idx = rng.integers(0, len(ds), size=args.batch_size)
        wanted: dict[int, list[int]] = {}
        for i in idx:
            c, k = ds.locate(int(i))
            wanted.setdefault(c, []).append(k)
        for c, ks in wanted.items():
            vol = load_case(cases[c].image, cases[c].label, config, cases[c].case_id)
            _ = torch.from_numpy(vol.image[ks]), torch.from_numpy(vol.mask[ks].astype(np.int64))
            n_slices += len(ks)
    decode_rate = n_slices / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    vol = load_case(cases[0].image, cases[0].label, config, cases[0].case_id)
    seq_rate = len(vol.image) / (time.perf_counter() - t0)

    print()
    print(
        f"| loader ({args.image_size}x{args.image_size}, batch {args.batch_size}, 1 worker) | slices/s | vs cache |"
    )
    print("|---|---:|---:|")
    print(f"| slice cache (memory-mapped .npy) | {cache_rate:,.0f} | 1x |")
    print(f"| decode NIfTI per random batch | {decode_rate:,.1f} | {cache_rate / decode_rate:,.0f}x slower |")
    print(f"| decode NIfTI, whole volume used | {seq_rate:,.1f} | {cache_rate / seq_rate:,.0f}x slower |")

    print()
    print(
        "| volumes | slices | cache data MB | RSS after setup MB | peak RSS MB | anon RSS MB | file-backed RSS MB | epoch slices/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in sorted(args.cases):
        out = subprocess.run(
            [sys.executable, __file__, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
             "--child", f"{root}|{cache}|{n}"],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {r['cases']} | {r['slices']} | {r['dataset_mb']:.0f} | {r['rss_after_setup_mb']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['anon_rss_mb']:.0f} | {r['file_rss_mb']:.0f} | "
            f"{r['epoch_slices_per_s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
