"""kd-hr: plain distillation across the resolution gap: the lr student, initialised from lr,
distilled directly from the frozen full-resolution hr model instead of the feature-shifted
teacher, with crd's recipe. Field loss: MSE to hr's full-resolution field. Feature loss: the
attention maps of hr's decoder at 1/2, 1/4, 1/8 and 1/16 of the input (decode_2x ... decode_16x),
which sit on the student's four grids, so nothing is resized. The paper's argument is that this
is harder than distilling from the FST."""

from crd.recipes import DISTILLATION

MODEL = {"kind": "lowres", "width": 1.0, "factor": 2}
TRAINING = "distill"
INIT = "lr"
TEACHER = "hr"
TRAIN = dict(DISTILLATION)
