"""crd: the cross-resolution distilled student: the lr network, initialised from the trained lr
weights and distilled from the frozen feature-shifted teacher (flow MSE + attention-map MSE)."""

MODEL = {"kind": "lowres", "width": 1.0, "factor": 2}
TRAINING = "distill"
INIT = "lr"
TEACHER = "fst"
