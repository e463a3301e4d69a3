"""lr@monai-localnet: the naive x2 low-resolution model over monai-localnet (the CRD scheme): the pair
downsampled x2, monai-localnet's field at that resolution, upsampled and x2."""

SCHEME = "lr"
BACKBONE = "monai-localnet"
