"""fst@monai-localnet: the feature-shifted teacher over monai-localnet (the CRD scheme): monai-localnet on the
full- and half-resolution pair, its features shifted one level and fused; initialised from the
trained monai-localnet, then trained unsupervised."""

SCHEME = "fst"
BACKBONE = "monai-localnet"
