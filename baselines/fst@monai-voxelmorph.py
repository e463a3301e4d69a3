"""fst@monai-voxelmorph: the feature-shifted teacher over monai-voxelmorph (the CRD scheme): monai-voxelmorph on the
full- and half-resolution pair, its features shifted one level and fused; initialised from the
trained monai-voxelmorph, then trained unsupervised."""

SCHEME = "fst"
BACKBONE = "monai-voxelmorph"
