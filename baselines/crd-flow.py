"""crd-flow: ablation of crd with the field loss only (the attention-map loss weighted 0): does
distilling the deformation field alone recover the resolution gap?"""

from crd.recipes import DISTILLATION

MODEL = {"kind": "lowres", "width": 1.0, "factor": 2}
TRAINING = "distill"
INIT = "lr"
TEACHER = "fst"
TRAIN = {**DISTILLATION, "attention_weight": 0.0}
