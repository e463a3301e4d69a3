"""crd-attn: ablation of crd with the feature (attention-map) loss only (the field loss weighted
0): do the teacher's features alone carry what the student lacks?"""

from crd.recipes import DISTILLATION

MODEL = {"kind": "lowres", "width": 1.0, "factor": 2}
TRAINING = "distill"
INIT = "lr"
TEACHER = "fst"
TRAIN = {**DISTILLATION, "flow_weight": 0.0}
