"""identity: no registration (zero displacement). Its scores are the pair before registration."""

MODEL = {"kind": "identity"}
TRAINING = None
