"""Does the training data path keep up with a training step? Pairs per second that `crd train`'s
data path delivers at a given size, on the device the config selects.

`crd train` has no loader workers: `_PairSampler` reads every training image once at the start
(onto the training device when they fit in 4 GB, else into pinned host memory) and each step then
draws a batch of pairs (indices, one host-to-device copy per image when pinned) and augments the
moving images on the device (`RandomFFD`: a random cubic B-spline field, trilinear warp). This
script measures, on a dataset it writes in the canonical layout (smooth random volumes at
``--size``), each part and the whole:

- preload: seconds per subject to read the images at the start (NIfTI, gzip);
- sample: the batch draw (and copies), pairs per second;
- augment: drawing and applying the random deformation, pairs per second;
- data path: both, pairs per second, against one training step of ``hr`` on the same batch
  (``--step``; the optimiser step `crd train` takes), as the fraction of a step it costs.

Usage (CPU; about 2 minutes at the paper's size with --step)::

    python benchmarks/data_path.py --size 160x192x224 --device cpu --threads 2 --step
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crd.data.layout import dataset_info, open_dataset, write_dataset_json, write_nifti, write_pairs
from crd.deform import RandomFFD
from crd.models.registration import build_model
from crd.runtime import configure_threads, select_device
from crd.train import TrainingObjective, TrainSettings, _PairSampler, draw_batch, optimiser_step


def _size(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 8:
        raise argparse.ArgumentTypeError(f"expected DxHxW (each >= 8), got {text!r}")
    return parts  # type: ignore[return-value]


def write_dataset(root: Path, shape: tuple[int, int, int], subjects: int, seed: int = 0) -> Path:
    """``subjects`` smooth random images (and empty label maps) at ``shape``, all pairs for training."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i:02d}" for i in range(subjects)]
    for sid in ids:
        noise = torch.from_numpy(rng.random((1, 1, *shape), dtype=np.float32))
        image = torch.nn.functional.avg_pool3d(noise, 5, 1, 2)[0, 0].numpy()
        write_nifti(root / "images" / f"{sid}.nii.gz", image, (1.0, 1.0, 1.0))
        write_nifti(root / "labels" / f"{sid}.nii.gz", np.zeros(shape, np.int16), (1.0, 1.0, 1.0))
    rows = [("train", f, m) for f in ids for m in ids if f != m] + [("val", ids[0], ids[1]), ("test", ids[0], ids[1])]
    write_pairs(root, rows)
    write_dataset_json(root, dataset_info(name="datapath", labels={1: "none"}, spacing=(1.0, 1.0, 1.0), shape=shape))
    return root


def _timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (after one untimed), device synchronised."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=_size, default=(160, 192, 224), help="image size DxHxW (default 160x192x224)")
    parser.add_argument("--subjects", type=int, default=4, help="subjects written (default 4)")
    parser.add_argument("--batch", type=int, default=1, help="pairs per step (default 1, the paper's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per part (median; default 5)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--step", action="store_true", help="also time one hr training step on the batch")
    args = parser.parse_args()

    device = select_device(args.device)
    threads = configure_threads(args.threads)
    size_text = "x".join(map(str, args.size))
    print(f"data path at {size_text}, batch {args.batch}, device {device}, {threads} threads")
    with tempfile.TemporaryDirectory(prefix="crd-datapath-") as tmp:
        t0 = time.perf_counter()
        dataset = open_dataset(write_dataset(Path(tmp) / "datapath", args.size, args.subjects))
        print(f"  wrote {args.subjects} subjects in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        sampler = _PairSampler(dataset, "train", device)
        preload = (time.perf_counter() - t0) / args.subjects
        image = next(iter(sampler.images.values()))  # (cuda != cuda:0 as devices: ask the tensor itself)
        where = "pinned host memory" if image.is_pinned() else f"the memory of {image.device}"
        generator = torch.Generator().manual_seed(0)
        augment = RandomFFD(probability=1.0)

        def sample():
            return sampler.batch(args.batch, generator)

        _, moving = sample()

        def augmented():
            apply, flow = augment.sample(moving.shape[2:], args.batch, generator, device=device)
            return augment.apply(moving, apply, flow)

        def data_path():  # what crd train does before each step
            return draw_batch(sampler, augment, args.batch, generator)

        t_sample = _timed(sample, args.repeats, device)
        t_augment = _timed(augmented, args.repeats, device)
        t_path = _timed(data_path, args.repeats, device)
        print(f"  preload: {preload:.3f} s per subject (images held in {where})")
        print(f"  sample:  {t_sample * 1e3:9.2f} ms per batch = {args.batch / t_sample:8.1f} pairs/s")
        print(f"  augment: {t_augment * 1e3:9.2f} ms per batch = {args.batch / t_augment:8.1f} pairs/s")
        print(f"  data path (sample + augment): {t_path * 1e3:9.2f} ms per batch = {args.batch / t_path:8.1f} pairs/s")
        if args.step:
            model = build_model({"kind": "fullres"}).to(device)
            settings = TrainSettings()
            objective = TrainingObjective(settings, None)
            optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
            fixed, mov = data_path()

            def step():
                optimiser_step(objective, model, optimizer, fixed, mov, settings.grad_clip)

            t_step = _timed(step, max(1, min(args.repeats, 2)), device)
            print(f"  hr training step: {t_step:.3f} s; the data path costs {t_path / t_step:.1%} of it")


if __name__ == "__main__":
    main()
