"""lr: naive low resolution: the backbone on the pair downsampled x2, its field upsampled and x2."""

MODEL = {"kind": "lowres", "width": 1.0, "factor": 2}
TRAINING = "unsupervised"
