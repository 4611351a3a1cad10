"""Device strings as users type them: cpu, cuda, cuda:N."""

from __future__ import annotations

import os
import re

from .errors import ConfigError

_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


def validate_device(device: str, option: str = "--device") -> str:
    device = device.strip().lower()
    if not _DEVICE.match(device):
        raise ConfigError(f"{option} {device!r} is not a device: use cpu, cuda or cuda:N")
    return device


def resolve_torch_device(device: str, option: str = "--device") -> str:
    """The device torch will really use. CUDA requested on a machine without it falls back to CPU, loudly."""
    import logging

    import torch

    device = validate_device(device, option)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            logging.getLogger("atlaspatch").warning("%s %s: CUDA is not available here, using cpu", option, device)
            return "cpu"
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what a batch scheduler or taskset granted)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
