"""fourier-net: Fourier-Net (Jia et al., AAAI 2023), an efficient network from outside the CRD paper.

Written from the paper (X. Jia et al., "Fourier-Net: Fast Image Registration with Band-limited
Deformation", AAAI 2023), not from its authors' code (which carries no licence). Its idea: the
displacement field of a smooth registration is nearly band-limited, so the network only predicts
its low-frequency part. An encoder (a U-Net whose
decoder stops at 1/4 of the input resolution) predicts a small spatial field on the 1/4 grid; a
parameter-free decoder takes its discrete Fourier transform, zero-pads the (centred) spectrum to
the full grid and transforms back, which is band-limited (sinc) interpolation of the small field
to full resolution. Here the encoder is crd-bench's backbone layers (the CRD authors' U-Net, the
same widths) cut after the 1/4 decoder level, so that its parameters, time and memory compare
with `hr` and `lr` like for like; the displacement version (no diffeomorphic integration), trained
with the same losses and budget as `hr`.

The field is in voxels of the full grid, channels (D, H, W), as every crd-bench model's.
"""

MODEL = {"kind": "fourier-net", "width": 1.0, "band": 4}
TRAINING = "unsupervised"


def band_limited_upsample(small, size):
    """Zero-pad the centred spectrum of ``small`` ``(B, C, d, h, w)`` to ``size`` ``(D, H, W)``
    (each at least as large) and transform back: the band-limited interpolation of ``small`` on
    the larger grid, amplitudes kept (a constant stays that constant). Returns ``(B, C, D, H, W)``."""
    import torch
    import torch.nn.functional as F

    dims = (-3, -2, -1)
    spectrum = torch.fft.fftshift(torch.fft.fftn(small.float(), dim=dims), dim=dims)
    pads = []
    for s, big in zip(reversed(small.shape[2:]), reversed(size), strict=True):  # F.pad: last axis first
        before = big // 2 - s // 2  # keeps frequency 0 at the centre index of the larger grid
        pads += [before, big - s - before]
    padded = F.pad(spectrum, pads)
    ratio = float(size[0] * size[1] * size[2]) / float(small.shape[2] * small.shape[3] * small.shape[4])
    return torch.fft.ifftn(torch.fft.ifftshift(padded, dim=dims), dim=dims).real * ratio


def build_model(config):
    import torch
    import torch.nn as nn

    from crd.models.backbone import conv3, initialise_weights, leaky, scaled

    class FourierNet(nn.Module):
        """Encoder to a ``(B, 3, D/band, H/band, W/band)`` field, band-limited decoder to full size."""

        def __init__(self, width=1.0, band=4):
            super().__init__()
            if band != 4:
                raise ValueError(f"band: this encoder stops at 1/4 of the input, got {band}")
            self.config = {"kind": "fourier-net", "width": float(width), "band": int(band)}
            c16, c32 = scaled(16, width), scaled(32, width)
            self.conv1, self.conv2 = conv3(2, c16), conv3(c16, c32, 2)
            self.conv3, self.conv4, self.conv5 = conv3(c32, c32, 2), conv3(c32, c32, 2), conv3(c32, c32, 2)
            self.decode5, self.decode4, self.decode3 = conv3(c32, c32), conv3(2 * c32, c32), conv3(2 * c32, c32)
            self.flow = conv3(c32, 3)
            initialise_weights(self)  # as crd-bench's backbone: He for LeakyReLU, the flow head near 0

        size_multiple = 16  # four stride-2 convolutions in the encoder

        def forward(self, fixed, moving):
            x = torch.cat([fixed, moving], dim=1)
            e1 = leaky(self.conv1(x))
            e4 = leaky(self.conv3(leaky(self.conv2(e1))))
            e8 = leaky(self.conv4(e4))
            d16 = leaky(self.decode5(leaky(self.conv5(e8))))
            d8 = leaky(self.decode4(torch.cat([nn.functional.interpolate(d16, size=e8.shape[2:]), e8], 1)))
            d4 = leaky(self.decode3(torch.cat([nn.functional.interpolate(d8, size=e4.shape[2:]), e4], 1)))
            return band_limited_upsample(self.flow(d4), tuple(fixed.shape[2:]))

    return FourierNet(config.get("width", 1.0), config.get("band", 4))
