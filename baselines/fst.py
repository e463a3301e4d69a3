"""fst: the feature-shifted teacher: one backbone on the full- and half-resolution pair, features
fused by a second decoder; initialised from the trained hr weights, then trained unsupervised."""

MODEL = {"kind": "fst", "width": 1.0}
TRAINING = "unsupervised"
INIT = "hr"
