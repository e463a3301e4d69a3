"""x2-oracle@hr: the x2 ceiling (an oracle, not a method): the trained hr's field restricted to
what an x2 student can output (least squares onto its upsampled coarse fields); uses hr at test time."""

MODEL = {"kind": "x2-oracle", "factor": 2, "restriction": "lsq"}
TRAINING = None
ORACLE_OF = "hr"
