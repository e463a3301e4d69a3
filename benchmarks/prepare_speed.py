"""Time `crd prepare` per subject at the real archives' sizes, on synthetic stand-ins.

The public archives cannot be downloaded here, so this builds archives laid out like the real
ones (tests/fake_archives.py) at the real volume sizes and times the preparation of each:

    python benchmarks/prepare_speed.py [--subjects 4] [--threads 2] [--work /tmp/prep-bench]

Prints, per dataset, the input volume size, the archive size and seconds per subject (wall time
of `prepare_dataset` / subjects). Real CT scans vary in slice count (LiTS: 74 to 987 slices), so
the lits figure is for the size given by --lits-slices.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fake_archives as fake  # noqa: E402
from crd.data.prepare import prepare_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4, help="subjects per dataset (>= 4)")
    parser.add_argument("--threads", type=int, default=2, help="threads of prepare")
    parser.add_argument("--lits-slices", type=int, default=300, help="slices of each lits scan")
    parser.add_argument("--work", type=Path, default=Path("/tmp/crd-prepare-bench"))
    args = parser.parse_args()
    n = max(4, args.subjects)
    shutil.rmtree(args.work, ignore_errors=True)
    cases = {
        "oasis": (lambda f: fake.oasis_tar(f, shape=(160, 192, 224), ids=[f"{i:04d}" for i in range(1, n + 1)]),
                  {"val": 0, "test": 2}, (160, 192, 224)),
        "lpba40": (lambda f: fake.lpba40_zip(f, shape=(256, 124, 256), n=n + 1),
                   {"val": 1, "test": 2}, (256, 124, 256)),
        "lits": (lambda f: fake.lits_tar(f, shape=(512, 512, args.lits_slices), n=n),
                 {"val": 0, "test": 2}, (512, 512, args.lits_slices)),
        "abdomenctct": (lambda f: fake.abdomenctct_zip(f, shape=(192, 160, 256), n=n + 3),
                        {"val": 2}, (192, 160, 256)),
    }
    print(f"{'dataset':12s} {'input size':>14s} {'archive MB':>10s} {'subjects':>8s} {'s/subject':>9s}")
    for name, (build, options, shape) in cases.items():
        folder = args.work / "downloads" / name
        folder.mkdir(parents=True)
        archive = build(folder)
        start = time.perf_counter()
        out = prepare_dataset(name, folder, args.work / "data" / name, options=options,
                              threads=args.threads, progress=False)
        wall = time.perf_counter() - start
        subjects = len(list((out / "images").iterdir()))
        size = "x".join(map(str, shape))
        print(f"{name:12s} {size:>14s} {archive.stat().st_size / 1e6:10.0f} {subjects:8d} "
              f"{wall / subjects:9.2f}", flush=True)


if __name__ == "__main__":
    main()
