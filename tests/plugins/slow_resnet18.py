"""Test plugin: the example ResNet-18 under another name, sleeping before each batch (ATLASPATCH_TEST_BATCH_SLEEP
seconds) so a test can kill the process while features are being written."""

from __future__ import annotations

import os
import time

from atlaspatch.encoders.patch import PatchEncoderRegistry, PatchEncoderSpec, Preprocess
from atlaspatch.weights import WeightsSource


def _trunk():  # type: ignore[no-untyped-def]
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=0)


def _sleepy(module):  # type: ignore[no-untyped-def]
    from torch import nn

    class Sleepy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, images):  # type: ignore[no-untyped-def]
            time.sleep(float(os.environ.get("ATLASPATCH_TEST_BATCH_SLEEP", "0")))
            return self.inner(images)

    return Sleepy()


def register_patch_encoders(registry: PatchEncoderRegistry) -> None:
    registry.register(
        PatchEncoderSpec(
            name="slow_resnet18",
            dim=512,
            preprocess=Preprocess(input_size=224),
            weights=WeightsSource(name="slow_resnet18", repo_id="test-org/slow-resnet18", filename="resnet18.pth"),
            architecture=_trunk,
            head=_sleepy,
            description="test plugin",
        )
    )
