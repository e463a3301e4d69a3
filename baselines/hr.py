"""hr: the full-resolution backbone (the authors' VoxelMorph-style U-Net on the full-size pair)."""

MODEL = {"kind": "fullres", "width": 1.0}
TRAINING = "unsupervised"
