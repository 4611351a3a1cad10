"""Slide encoders: a registry of models that turn a slide's patch features into one embedding."""

from .plan import SlideEncoderPlan, plan_slide_encoders
from .registry import SlideEncoderRegistry, slide_encoder_registry
from .spec import SlideEncoderSpec, SlideInputs

__all__ = [
    "SlideEncoderPlan",
    "SlideEncoderRegistry",
    "SlideEncoderSpec",
    "SlideInputs",
    "plan_slide_encoders",
    "slide_encoder_registry",
]
