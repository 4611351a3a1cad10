"""Example --feature-plugin: your own ResNet-18 (e.g. fine-tuned on your lab's slides) as a patch encoder.

    atlaspatch embed-patches --slide S.svs --h5 out/patches/S.h5 -o out \
        --encoders my_resnet18 --feature-plugin examples/feature_plugins/my_resnet18.py --model-dir models/

finds its weights at models/my_resnet18/resnet18.pth (a ``torch.save(model.state_dict())`` of the timm
``resnet18`` built with ``num_classes=0``), or in the Hugging Face cache / hub under the repo named below.
See docs/feature-plugins.md for the interface.
"""

from __future__ import annotations

from atlaspatch.encoders.patch import PatchEncoderRegistry, PatchEncoderSpec, Preprocess
from atlaspatch.weights import WeightsSource


def _resnet18_trunk():  # type: ignore[no-untyped-def]
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=0)  # global-average-pooled 512-d


def register_patch_encoders(registry: PatchEncoderRegistry) -> None:
    registry.register(
        PatchEncoderSpec(
            name="my_resnet18",
            dim=512,
            preprocess=Preprocess(input_size=224),  # resize to 224, ImageNet mean/std
            weights=WeightsSource(name="my_resnet18", repo_id="my-lab/resnet18-histo", filename="resnet18.pth"),
            architecture=_resnet18_trunk,
            description="our lab's ResNet-18 (example plugin)",
            family="timm ResNet-18",
            channels_last=True,  # a CNN: faster in channels-last memory
        )
    )
