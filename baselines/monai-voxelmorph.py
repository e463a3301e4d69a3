"""monai-voxelmorph: VoxelMorph's U-Net (Balakrishnan et al., IEEE TMI 2019) as MONAI builds it, a third-party network.

MONAI's `monai.networks.nets.VoxelMorphUNet` with the widths of MONAI's own example of the
original VoxelMorph (encoder 16, 32, 32; decoder 32, 32, 32; final convolutions 16, 16; 3
max-poolings, so sizes are padded to multiples of 8), used as the displacement ("VoxelMorph-2")
variant: MONAI's `VoxelMorph` wrapper with integration off is this U-Net plus a warp, and crd-bench
warps itself. Trained by the generic rules with the same losses and budget as `hr`.

Its output is already crd-bench's field: MONAI's dense displacement (DDF, as its `Warp` block
uses it) is in voxels, one channel per spatial axis in the array's order, and the warped image is
`moving(p + ddf(p))` (tests/test_monai_networks.py checks this against MONAI's `Warp`). MONAI's
networks take the moving image first (`cat([moving, fixed])`), which `forward(fixed, moving)`
respects. The last convolution starts at N(0, 1e-5) weights and zero bias, the VoxelMorph paper's
initialisation of its flow layer (MONAI leaves PyTorch's default), so training starts from a
near-zero field as crd-bench's networks do.

The CRD scheme applies to it (`lr@monai-voxelmorph`, `fst@monai-voxelmorph`,
`crd@monai-voxelmorph`): its class names its decoder features (`feature_modules`): the last
convolution before the flow layer (16 channels, full resolution) and the convolutions of the
up-sampling blocks at 1/2 and 1/4 (32 channels each; with these widths the U-Net has two
poolings).
"""

MODEL = {"kind": "monai-voxelmorph", "channels": [16, 32, 32, 32, 32, 32], "final_conv_channels": [16, 16]}
TRAINING = "unsupervised"


def build_model(config):
    """MONAI's VoxelMorphUNet under crd-bench's model contract (crd.models.contract)."""
    import torch
    import torch.nn as nn
    from monai.networks.nets import VoxelMorphUNet

    class MonaiVoxelMorph(nn.Module):
        """``forward(fixed, moving)`` ``(B, 1, D, H, W)`` each -> field ``(B, 3, D, H, W)``, voxels."""

        #: decoder features fine to coarse (grids 1, 1/2, 1/4), for the CRD scheme (lr@, fst@, crd@)
        feature_modules = ["unet.net.1.final_conv_1", "unet.net.0.1.submodule.2.0",
                           "unet.net.0.1.submodule.1.submodule.2.0"]  # fmt: skip

        def __init__(self):
            super().__init__()
            self.config = dict(config)
            channels = tuple(int(c) for c in config["channels"])
            self.size_multiple = 2 ** (len(channels) // 2)  # one max-pooling per channel pair
            self.unet = VoxelMorphUNet(
                spatial_dims=3, in_channels=2, unet_out_channels=channels[-1], channels=channels,
                final_conv_channels=tuple(int(c) for c in config["final_conv_channels"]),
            )  # fmt: skip
            flow = self.unet.net[-1].final_conv_out.conv
            nn.init.normal_(flow.weight, 0.0, 1e-5)
            nn.init.zeros_(flow.bias)

        def forward(self, fixed, moving):
            return self.unet(torch.cat([moving, fixed], dim=1))

    return MonaiVoxelMorph()
