"""monai-localnet: LocalNet (Hu et al., Medical Image Analysis 2018) as MONAI builds it, a third-party network.

MONAI's `monai.networks.nets.LocalNet` (the DeepReg network): an encoder of 4 levels (`num_channel_initial`
channels at the top, doubling per level, 3 max-poolings, so sizes are padded to multiples of 8)
whose decoder predicts a displacement at every extracted level (0 to 3), upsampled additively and
summed. Trained by the generic rules with the same losses and budget as `hr`.

Its output is crd-bench's field unchanged: MONAI's dense displacement (DDF) is in voxels, one
channel per spatial axis in the array's order, warped image `moving(p + ddf(p))`
(tests/test_monai_networks.py checks this against MONAI's `Warp`). It takes the moving image
first (`cat([moving, fixed])`), as DeepReg does. Its output layers start at zero
(`out_kernel_initializer="zeros"`, one of MONAI's two choices), so training starts from the zero
field as crd-bench's networks do. `num_channel_initial` 8 keeps it near `hr`'s size.

The CRD scheme applies to it (`lr@monai-localnet`, `fst@monai-localnet`, `crd@monai-localnet`):
its class names its decoder features (`feature_modules`): the decoder's convolution blocks at 1,
1/2 and 1/4 (8, 16, 32 channels) and the bottom block at 1/8 (64).
"""

MODEL = {"kind": "monai-localnet", "num_channel_initial": 8, "extract_levels": [0, 1, 2, 3]}
TRAINING = "unsupervised"


def build_model(config):
    """MONAI's LocalNet under crd-bench's model contract (crd.models.contract)."""
    import torch
    import torch.nn as nn
    from monai.networks.nets import LocalNet

    class MonaiLocalNet(nn.Module):
        """``forward(fixed, moving)`` ``(B, 1, D, H, W)`` each -> field ``(B, 3, D, H, W)``, voxels."""

        #: decoder features fine to coarse (grids 1, 1/2, 1/4, 1/8), for the CRD scheme (lr@, fst@, crd@)
        feature_modules = ["net.decode_convs.2", "net.decode_convs.1", "net.decode_convs.0", "net.bottom_block"]

        def __init__(self):
            super().__init__()
            self.config = dict(config)
            levels = tuple(int(level) for level in config["extract_levels"])
            self.size_multiple = 2 ** max(levels)
            self.net = LocalNet(
                spatial_dims=3, in_channels=2, num_channel_initial=int(config["num_channel_initial"]),
                extract_levels=levels, out_channels=3, out_kernel_initializer="zeros",
            )  # fmt: skip

        def forward(self, fixed, moving):
            return self.net(torch.cat([moving, fixed], dim=1))

    return MonaiLocalNet()
