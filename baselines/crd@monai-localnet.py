"""crd@monai-localnet: the CRD student over monai-localnet: lr@monai-localnet initialised from its trained
weights and distilled from the frozen fst@monai-localnet (field + attention-map MSE, the authors'
student recipe crd.recipes.DISTILLATION)."""

SCHEME = "crd"
BACKBONE = "monai-localnet"
