"""Test plugin: `tiny_conv`, a 16-d patch encoder that needs no weights file and costs almost nothing on a CPU.

Its parameters come from a fixed seed (the same in every process), so two runs give the same features. It sleeps
ATLASPATCH_TEST_BATCH_SLEEP seconds before each batch, so a test can kill a run while features are being written.
It tests the pipeline's machinery; it is not a model.
"""

from __future__ import annotations

import os
import time

from atlaspatch.encoders.patch import PatchEncoderRegistry, PatchEncoderSpec, Preprocess

NAME = "tiny_conv"
DIM = 16
SEED = 1234


def _architecture():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class TinyConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, DIM, kernel_size=32, stride=32)
            generator = torch.Generator().manual_seed(SEED)
            with torch.no_grad():
                self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.02)
                self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=generator) * 0.1)

        def forward(self, images):  # type: ignore[no-untyped-def]
            time.sleep(float(os.environ.get("ATLASPATCH_TEST_BATCH_SLEEP", "0")))
            return torch.relu(self.conv(images)).mean(dim=(2, 3))

    return TinyConv()


def register_patch_encoders(registry: PatchEncoderRegistry) -> None:
    registry.register(
        PatchEncoderSpec(
            name=NAME,
            dim=DIM,
            preprocess=Preprocess(input_size=224),
            weights=None,
            architecture=_architecture,
            description="test plugin (seeded random conv, no weights)",
        )
    )
