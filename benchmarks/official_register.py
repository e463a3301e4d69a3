"""Register a real 160x192x224 brain pair on the CPU with the CRD authors' two imported checkpoints.

There is no OASIS here, so the pair is built from the MNI152 2009c symmetric template at 1 mm that
nilearn ships inside its package (T1 and grey/white matter probability maps; no download):

- fixed: the skull-stripped T1 template, intensities scaled to [0, 1];
- fixed labels: 1 CSF, 2 grey matter, 3 white matter: the arg-max of (CSF, GM, WM) where it is at
  least 0.5 inside the brain mask, else 0. nilearn packages no CSF map, so CSF = 1 - GM - WM
  inside the brain mask (template > 0);
- moving: the same brain warped by a known smooth random field drawn on the template's grid (cubic
  B-spline, ``crd.deform.random_bspline_displacement``, 6x6x6 control points, components up to
  ``--max-displacement`` voxels, seed ``--seed``); moving labels warped with nearest neighbour;
- all four then reoriented to ``--orientation`` (default LIA, see below) by permuting and flipping
  axes (no resampling) and cut to 160x192x224 voxels of 1 mm around the brain.

Then, as a user would, in subprocesses: ``crd import-official`` for ``lr`` and ``fst``, and
``crd register`` (CPU) for each, printing what ``crd register`` printed (time and peak memory),
and at the end one table: the Dice per tissue before and after registration and the folding of
each field. Two images, two records of the input normalisation, with ``crd register``'s DEFAULT
options (the checkpoint's record decides), plus the explicit route:

- images: (a) the template in [0, 1] (min-max of the T1; its white matter sits near its maximum, at
  about 0.84); (b) OASIS-like: both images scaled so that white matter sits at
  110/255 = 0.43, where FreeSurfer's ``norm.mgz`` (and so OASIS ``aligned_norm``) puts it;
- records: ``minmax``, what ``crd import-official`` recorded before it was fixed (each image
  min-max scaled: an OASIS-like image gets its white matter doubled back to about 0.84), rebuilt
  here by rewriting the ``input`` entry of a fresh import; ``none``, what it records now (images
  fed as stored, as the authors' OasisTrain/OasisTest feed aligned_norm);
- route: OASIS-like images with ``--normalisation none`` on the old record, the work-around before
  the fix; it must give exactly the Dice of the new record's default.

Orientation. OASIS ``aligned_norm`` (neurite-oasis) comes from FreeSurfer's ``norm.mgz``, whose
voxel axes are FreeSurfer's conformed LIA (i: right -> left, j: superior -> inferior,
k: posterior -> anterior), cropped to 160x192x224; the three sides fit the brain's left-right,
superior-inferior and anterior-posterior extents in that order. LIA is the default here for that
reason, not because it scored best. ``--explore`` registers the same pair in 16 candidate
orientations (all axis flips of the axis orders L-R, S-I, A-P and L-R, A-P, S-I) with the ``lr``
model, in-process, in both settings, and prints the Dice after each: a check of how much the
network cares, kept out of the headline numbers (choosing the orientation by the test pair's Dice
would flatter them).

Install the template once (nilearn is NOT a crd-bench dependency; only its data files are read,
nilearn itself is never imported, and ``--no-deps`` leaves the packages crd-bench pins alone)::

    pip install --no-deps nilearn

Run (about five minutes on 2 cores; ``--explore`` adds about five)::

    python benchmarks/official_register.py --official DIR --work /tmp/crd-official-bench

(``DIR``: the folder holding the authors' released ``.pth`` files, under their released names,
``VMdalca1_Hinput_OASIS_R1_D_24500.pth`` (lr) and
``VMdalca1_Hinput_Together_OASIS_R1_D_AlignShift_20750.pth`` (fst), directly or in the repository's
``ckpt/student/`` and ``ckpt/teacher/``.)
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from crd.deform import random_bspline_displacement
from crd.metrics import dice_per_label, folding, jacobian_determinant
from crd.models.checkpoint import atomic_torch_save, read_checkpoint
from crd.models.functional import warp
from crd.models.official import INPUT_SPEC

SHAPE = (160, 192, 224)
TISSUES = {1: "CSF", 2: "GM", 3: "WM"}
#: the authors' files, by the names they were released under first (ckpt/student, ckpt/teacher), then
#: the names the shared copy uses
FILES = {
    "lr": ("VMdalca1_Hinput_OASIS_R1_D_24500.pth", "oasis_lr_student_init.pth"),
    "fst": ("VMdalca1_Hinput_Together_OASIS_R1_D_AlignShift_20750.pth", "oasis_fst_teacher.pth"),
}


def official_file(folder: Path, kind: str) -> Path:
    """The authors' ``kind`` (lr or fst) weights in ``folder`` (or its ckpt/student, ckpt/teacher),
    under either name of :data:`FILES`; exits with one line naming what it looked for."""
    sub = {"lr": "student", "fst": "teacher"}[kind]
    for base in (folder, folder / "ckpt" / sub):
        for name in FILES[kind]:
            if (base / name).is_file():
                return base / name
    sys.exit(f"{folder}: no {kind} weights: expected {' or '.join(FILES[kind])} (the authors' {sub} checkpoint), "
             f"in the folder or in its ckpt/{sub}/")
TEMPLATE = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
#: the ``input`` entry ``crd import-official`` wrote before it was fixed (min-max per image)
OLD_INPUT = {
    **INPUT_SPEC,
    "intensity": "min-max scaled to [0, 1] per image, as OASIS aligned_norm (skull-stripped, in [0, 1])",
    "normalisation": "minmax",
}


def template_folder() -> Path:
    """nilearn's packaged data folder, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the MNI152 template comes with nilearn: pip install --no-deps nilearn")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in TEMPLATE.values() if not (folder / name).is_file()]
    if missing:
        sys.exit(f"{folder} lacks {', '.join(missing)}: this nilearn does not package the 1 mm MNI152 template")
    return folder


def reorient(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip voxel axes so that they point along ``codes`` (e.g. "LIA"); no resampling."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(tuple(codes)))
    return apply_orientation(array, transform), affine @ inv_ornt_aff(transform, array.shape)


def crop_or_pad(arrays: list[np.ndarray], affine: np.ndarray, mask: np.ndarray, shape=SHAPE):
    """Cut ``shape`` voxels centred on ``mask``'s bounding box out of each array (zeros outside)."""
    nz = np.argwhere(mask)
    centre = (nz.min(0) + nz.max(0)) / 2.0
    start = np.round(centre - (np.asarray(shape) - 1) / 2.0).astype(int)
    out = []
    for a in arrays:
        b = np.zeros(shape, a.dtype)
        src = tuple(slice(max(s, 0), min(s + n, m)) for s, n, m in zip(start, shape, a.shape, strict=True))
        dst = tuple(slice(x.start - s, x.stop - s) for x, s in zip(src, start, strict=True))
        b[dst] = a[src]
        out.append(b)
    shift = np.eye(4)
    shift[:3, 3] = start
    return out, affine @ shift


def template_pair(folder: Path, seed: int, max_displacement: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fixed and moving images and labels on the template's own grid (197x233x189, RAS, 1 mm).

    The known deformation is drawn on this grid, so that every orientation tried later holds the
    same pair, voxel for voxel, only with its axes permuted and flipped.
    """
    t1_img = nib.load(str(folder / TEMPLATE["t1"]))
    t1 = t1_img.get_fdata(dtype=np.float32)
    gm = nib.load(str(folder / TEMPLATE["gm"])).get_fdata(dtype=np.float32) / 255.0
    wm = nib.load(str(folder / TEMPLATE["wm"])).get_fdata(dtype=np.float32) / 255.0
    brain = t1 > 0
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    probs = np.stack([csf, gm, wm])
    labels = (probs.argmax(0) + 1).astype(np.uint8)
    labels[(probs.max(0) < 0.5) | ~brain] = 0
    fixed = (t1 - t1.min()) / (t1.max() - t1.min())

    g = torch.Generator().manual_seed(seed)
    field = random_bspline_displacement(
        fixed.shape, n_control=6, max_displacement=max_displacement, power=1.0, generator=g
    )
    moving = warp(torch.from_numpy(fixed)[None, None], field)[0, 0].numpy()
    moving_labels = warp(torch.from_numpy(labels)[None, None], field, mode="nearest")[0, 0].numpy()
    inside = torch.from_numpy(brain)[None].expand(3, *brain.shape)
    print(
        f"pair: MNI152 2009c sym 1 mm; moving = fixed warped by a cubic B-spline field (seed {seed}): "
        f"in the brain max |component| {field[0][inside].abs().max():.2f} voxels, "
        f"mean |u| {field[0].norm(dim=0)[inside[0]].mean():.2f} voxels"
    )
    arrays = {"fixed": fixed, "moving": moving, "fixed_labels": labels, "moving_labels": moving_labels.astype(np.uint8)}
    return arrays, t1_img.affine


def write_pair(arrays: dict[str, np.ndarray], affine: np.ndarray, orientation: str, work: Path) -> dict[str, Path]:
    """Reorient the pair to ``orientation``, cut 160x192x224 around the fixed brain, write NIfTI."""
    oriented = {}
    for name, a in arrays.items():
        oriented[name], new_affine = reorient(a, affine, orientation)
    names = list(oriented)
    cut, new_affine = crop_or_pad([oriented[n] for n in names], new_affine, oriented["fixed_labels"] > 0)
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, array in zip(names, cut, strict=True):
        img = nib.Nifti1Image(array, new_affine)
        img.set_qform(new_affine, code=1)
        img.set_sform(new_affine, code=1)
        paths[name] = work / f"{name}.nii.gz"
        nib.save(img, str(paths[name]))
    return paths


def dice_row(fixed_labels: np.ndarray, labels: np.ndarray) -> list[float]:
    d = dice_per_label(fixed_labels, labels, list(TISSUES))
    values = [d[k] for k in TISSUES]
    return values + [float(np.mean(values))]


def crd_command() -> list[str]:
    exe = shutil.which("crd")
    return [exe] if exe else [sys.executable, "-m", "crd"]


def run(argv: list[str]) -> str:
    print("$ " + " ".join(["crd", *argv[len(crd_command()) :]]), flush=True)
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stderr}")
    print(done.stdout.rstrip(), flush=True)
    return done.stdout


def explore(arrays: dict[str, np.ndarray], affine: np.ndarray, scale: float, args: argparse.Namespace) -> None:
    """Dice after ``lr`` registration of the same OASIS-like pair in 16 orientations, each fed in
    both array orders (reversed: the authors' SimpleITK order, the default; stored: nibabel's)."""
    from crd.models.official import import_official
    from crd.register import register

    ckpt = import_official(official_file(args.official, "lr"), args.work / "explore_lr.pt", "lr")
    candidates = [a + b + c for a in "LR" for b in "IS" for c in "AP"] + [
        a + b + c for a in "LR" for b in "AP" for c in "IS"
    ]
    oasis_like = {**arrays, "fixed": arrays["fixed"] * scale, "moving": arrays["moving"] * scale}
    print("mean Dice (CSF, GM, WM) after lr-official, the OASIS-like pair in 16 orientations")
    print("orientation  before   reversed  stored")
    for codes in candidates:
        after = []
        out = args.work / f"explore_{codes}"
        p = write_pair(oasis_like, affine, codes, out)
        fixed_labels = np.asanyarray(nib.load(str(p["fixed_labels"])).dataobj)
        before = dice_row(fixed_labels, np.asanyarray(nib.load(str(p["moving_labels"])).dataobj))[-1]
        for order in ("reversed", "stored"):
            register(ckpt, p["fixed"], p["moving"], out / "warped.nii.gz", moving_labels=p["moving_labels"],
                     out_warped_labels=out / "warped_labels.nii.gz", device="cpu", threads=args.threads,
                     array_order=order)  # fmt: skip
            after.append(dice_row(fixed_labels, np.asanyarray(nib.load(str(out / "warped_labels.nii.gz")).dataobj))[-1])
        print(f"{codes:11s}  {before:.4f}   {after[0]:.4f}    {after[1]:.4f}", flush=True)


def import_checkpoints(args: argparse.Namespace) -> dict[tuple[str, str], Path]:
    """``crd import-official`` for lr and fst (fresh, so no stale file is reused), and a copy of
    each whose ``input`` entry is the one recorded before the fix: ``(kind, record) -> path``."""
    crd = crd_command()
    out = {}
    for kind in ("lr", "fst"):
        ckpt = args.work / f"{kind}-official.pt"
        run([*crd, "import-official", str(official_file(args.official, kind)), str(ckpt), "--kind", kind])
        payload = read_checkpoint(ckpt)
        assert payload["input"]["normalisation"] == "none", payload["input"]
        out[kind, "none"] = ckpt
        out[kind, "minmax"] = args.work / f"{kind}-official-minmax-record.pt"
        atomic_torch_save({**payload, "input": dict(OLD_INPUT)}, out[kind, "minmax"])
    return out


def register_one(paths: dict[str, Path], out: Path, ckpt: Path, args: argparse.Namespace, extra: list[str]):
    """``crd register`` on one pair; returns (how the images were fed, Dice row, folding in %)."""
    files = {k: out / f"{k}.nii.gz" for k in ("warped", "flow", "warped_labels")}
    out.mkdir(parents=True, exist_ok=True)
    printed = run([
        *crd_command(), "register", "--checkpoint", str(ckpt), "--fixed", str(paths["fixed"]),
        "--moving", str(paths["moving"]), "--out-warped", str(files["warped"]), "--out-flow", str(files["flow"]),
        "--moving-labels", str(paths["moving_labels"]), "--out-warped-labels", str(files["warped_labels"]),
        "--device", "cpu", "--threads", str(args.threads), *extra,
    ])  # fmt: skip
    fed = printed.split("(normalisation ", 1)[1].split(")", 1)[0].replace(", array order ", "/")
    fixed_labels = np.asanyarray(nib.load(str(paths["fixed_labels"])).dataobj)
    dice = dice_row(fixed_labels, np.asanyarray(nib.load(str(files["warped_labels"])).dataobj))
    flow = nib.load(str(files["flow"])).get_fdata(dtype=np.float32)
    return fed, dice, folding(jacobian_determinant(np.moveaxis(flow, -1, 0)))["fold_pct"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="folder with the authors' released .pth files")
    parser.add_argument("--work", type=Path, default=Path("/tmp/crd-official-bench"), help="where files are written")
    parser.add_argument("--orientation", default="LIA", help="voxel axis codes of the pair (default LIA, as OASIS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the known deformation")
    parser.add_argument("--max-displacement", type=float, default=10.0, help="largest control displacement, voxels")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for crd register")
    parser.add_argument("--explore", action="store_true", help="also try 16 orientations with the lr model")
    args = parser.parse_args()
    for kind in ("lr", "fst"):
        official_file(args.official, kind)  # exits with one line naming what is missing

    start = time.perf_counter()
    arrays, affine = template_pair(template_folder(), args.seed, args.max_displacement)
    # FreeSurfer's norm.mgz puts white matter at 110 on a 0-255 scale; the template's is near its
    # maximum (median 222 of 255), so after min-max it is twice as bright as in OASIS aligned_norm
    wm = float(np.median(arrays["fixed"][arrays["fixed_labels"] == 3]))
    scale = (110.0 / 255.0) / wm
    oasis_like = {**arrays, "fixed": arrays["fixed"] * scale, "moving": arrays["moving"] * scale}
    pairs = {
        f"template, WM {wm:.2f}": write_pair(arrays, affine, args.orientation, args.work / "template"),
        f"OASIS-like, WM {wm * scale:.2f}": write_pair(oasis_like, affine, args.orientation, args.work / "oasis_like"),
    }
    print(f"OASIS-like: both images times {scale:.3f}, so that white matter is at 110/255 as in norm.mgz / 255")
    ckpts = import_checkpoints(args)
    names = list(pairs)
    settings = [  # (images, record, extra options)
        (names[0], "minmax", []),
        (names[0], "none", []),
        (names[1], "minmax", []),
        (names[1], "none", []),
        (names[1], "minmax", ["--normalisation", "none"]),
        (names[1], "none", ["--array-order", "stored"]),
    ]
    first = pairs[names[0]]
    fixed_labels = np.asanyarray(nib.load(str(first["fixed_labels"])).dataobj)
    before = dice_row(fixed_labels, np.asanyarray(nib.load(str(first["moving_labels"])).dataobj))
    rows = []
    for i, (images, record, extra) in enumerate(settings):
        for kind in ("lr", "fst"):
            out = args.work / f"run{i}_{kind}"
            fed, dice, fold = register_one(pairs[images], out, ckpts[kind, record], args, extra)
            rows.append((images, record, " ".join(extra) or "default", f"{kind}-official", fed, dice, fold))

    tissues = "".join(f"{name:>7s}" for name in [*TISSUES.values(), "mean"])
    print(
        f"\nDice, {'x'.join(map(str, SHAPE))} MNI152 pair in {args.orientation} (1 CSF, 2 GM, 3 WM); "
        "crd register on the CPU; record = the checkpoint's input normalisation (minmax: as imported "
        "before the fix, none: as now); fed = the intensities / the array order the network got (reversed: "
        "SimpleITK's order, as the authors' loaders; stored: nibabel's)"
    )
    print(f"{'images':19s} {'record':7s} {'options':22s} {'model':13s} {'fed':16s}{tissues} {'fold %':>7s}")
    print(f"{'before registration':81s}" + "".join(f"{v:7.4f}" for v in before))
    for images, record, options, model, fed, dice, fold in rows:
        values = "".join(f"{v:7.4f}" for v in dice)
        print(f"{images:19s} {record:7s} {options:22s} {model:13s} {fed:16s}{values} {fold:7.4f}")
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    if args.explore:
        print()
        explore(arrays, affine, scale, args)


if __name__ == "__main__":
    main()
