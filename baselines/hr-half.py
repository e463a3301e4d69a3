"""hr-half: shrunk model: the backbone with half the channels, at full resolution."""

MODEL = {"kind": "fullres", "width": 0.5}
TRAINING = "unsupervised"
