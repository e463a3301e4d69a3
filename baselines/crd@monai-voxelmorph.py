"""crd@monai-voxelmorph: the CRD student over monai-voxelmorph: lr@monai-voxelmorph initialised from its trained
weights and distilled from the frozen fst@monai-voxelmorph (field + attention-map MSE, the authors'
student recipe crd.recipes.DISTILLATION)."""

SCHEME = "crd"
BACKBONE = "monai-voxelmorph"
