"""lr@monai-voxelmorph: the naive x2 low-resolution model over monai-voxelmorph (the CRD scheme): the pair
downsampled x2, monai-voxelmorph's field at that resolution, upsampled and x2."""

SCHEME = "lr"
BACKBONE = "monai-voxelmorph"
