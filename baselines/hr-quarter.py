"""hr-quarter: shrunk model: the backbone with a quarter of the channels, at full resolution (with
hr-half, "shrink the model" becomes a curve, not a point)."""

MODEL = {"kind": "fullres", "width": 0.25}
TRAINING = "unsupervised"
