"""ants-syn: ANTs SyN (Avants et al., Med Image Anal 2008), the classical method, run per pair on the CPU.

Symmetric image normalisation, the classical diffeomorphic registration that learned methods are
compared with, through antspyx (`pip install -e ".[ants]"`; under `--use-conda` its rule has its
own environment, workflow/envs/ants.yaml). The parameter set is antspyx's standard deformable-only
call, `ants.registration(type_of_transform="SyNOnly")` with its defaults, unchanged (no tuning on
crd-bench's data): no affine stage (every crd-bench dataset is affinely aligned beforehand, as the
networks' inputs are); one SyN stage, gradient step 0.2, update-field smoothing 3 voxels,
total-field smoothing 0; Mattes mutual information with 32 bins on every voxel; three resolutions
(shrink 4, 2, 1; smoothing 2, 1, 0 voxels) with 40, 20 and 0 iterations (the full resolution is
not iterated: antspyx's default speed/accuracy trade-off). It runs on the images as stored, in mm
(the dataset's spacing), with the ITK thread count crd evaluate gives (`threads.evaluate`).

ANTs' forward transforms (moving to fixed) are composed into one displacement field on the fixed
grid, in mm along the image axes; `field_from_ants` turns it into crd-bench's convention (voxels,
channels (D, H, W), the warped image is `moving(p + u(p))`). Everything else (warping, labels
nearest-neighbour, metrics, time per pair and peak RSS) is `crd evaluate`'s, as for every method.
Its rule is ants-syn.smk beside this file: the worked example of a method that brings its own rules.
"""

MODEL = None  # no network: ants-syn.smk scores it through register_pair below
TRAINING = None

# the parameters passed to ants.registration (antspyx's defaults for SyNOnly, written out)
ANTS_SETTINGS = {
    "type_of_transform": "SyNOnly",
    "grad_step": 0.2,
    "flow_sigma": 3,
    "total_sigma": 0,
    "syn_metric": "mattes",
    "syn_sampling": 32,
    "reg_iterations": (40, 20, 0),
}


def register_pair(fixed, moving, *, spacing, seed, threads):
    """Register ``moving`` to ``fixed`` (``(D, H, W)`` float32 arrays on one grid of voxel size
    ``spacing`` mm) with ANTs SyN on ``threads`` ITK threads, ANTs' random seed ``seed``.

    Returns the displacement field ``(3, D, H, W)`` float32, in voxels of the fixed grid, channels
    (D, H, W): the registered image is ``moving(p + u(p))``."""
    import os
    import tempfile

    try:
        import ants
    except ImportError as exc:
        raise ImportError(f"ants-syn needs antspyx ({exc}): pip install -e '.[ants]' or use --use-conda") from None

    from ants.config import set_ants_deterministic

    set_ants_deterministic(True, seed_value=int(seed))  # ANTs' --random-seed (and 1 thread) ...
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))  # ... then crd's thread count
    fixed_img = ants.from_numpy(fixed.astype("float32"), spacing=tuple(float(s) for s in spacing))
    moving_img = ants.from_numpy(moving.astype("float32"), spacing=tuple(float(s) for s in spacing))
    with tempfile.TemporaryDirectory(prefix="ants-syn-") as tmp:
        result = ants.registration(fixed=fixed_img, moving=moving_img, outprefix=os.path.join(tmp, "pair_"),
                                   **ANTS_SETTINGS)  # fmt: skip
        return field_from_ants(result["fwdtransforms"], fixed_img, os.path.join(tmp, "field_"))


def field_from_ants(transforms, reference, prefix):
    """ANTs transforms (a list of files, as ``ants.apply_transforms`` takes them: applied last to
    first to a point of ``reference``'s grid) as one displacement field in crd-bench's convention.

    ANTs composes them into a displacement field on ``reference``'s grid (written under ``prefix``)
    whose vectors are physical (mm, ITK's axes); each is mapped back to index steps through the
    grid's direction and spacing: ``u = (direction @ diag(spacing))^-1 d``. Returns
    ``(3, D, H, W)`` float32, voxels, channels in the array's axis order."""
    import ants
    import numpy as np

    path = ants.apply_transforms(reference, reference, list(transforms), compose=prefix)
    displacement = ants.image_read(path).numpy()  # (D, H, W, 3), mm
    index_to_mm = np.asarray(reference.direction, dtype=np.float64) @ np.diag(reference.spacing)
    steps = displacement.reshape(-1, 3) @ np.linalg.inv(index_to_mm).T
    return np.ascontiguousarray(np.moveaxis(steps.reshape(displacement.shape), -1, 0), dtype=np.float32)
