"""``--feature-plugin``: a Python file or importable module that adds patch encoders.

The interface (documented in docs/feature-plugins.md): the plugin defines

    def register_patch_encoders(registry: PatchEncoderRegistry) -> None

and calls ``registry.register(PatchEncoderSpec(...))`` once per encoder.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ...errors import AtlasPatchError, ConfigError, one_line

if TYPE_CHECKING:
    from .registry import PatchEncoderRegistry

ENTRY_POINT = "register_patch_encoders"


def _import_file(path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"atlaspatch_plugin_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--feature-plugin {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def import_plugin(plugin: Path | str) -> ModuleType:
    """A plugin file (``*.py`` or any existing path) or, failing that, an importable module name."""
    text = str(plugin)
    path = Path(text).expanduser()
    is_file = path.suffix == ".py" or path.exists()
    if is_file and not path.is_file():
        raise ConfigError(f"--feature-plugin {text}: no such file")
    if not is_file:
        try:
            if importlib.util.find_spec(text) is None:
                raise ModuleNotFoundError(text)
        except (ImportError, ValueError):
            raise ConfigError(f"--feature-plugin {text}: not a file and not an importable module") from None
    try:
        return _import_file(path) if is_file else importlib.import_module(text)
    except AtlasPatchError:
        raise
    except Exception as exc:
        raise ConfigError(f"--feature-plugin {text} failed to import: {one_line(exc)}") from None


def load_plugins(registry: PatchEncoderRegistry, plugins: Sequence[Path | str]) -> None:
    for plugin in plugins:
        module = import_plugin(plugin)
        register = getattr(module, ENTRY_POINT, None)
        if not callable(register):
            raise ConfigError(f"--feature-plugin {plugin}: defines no {ENTRY_POINT}(registry) function")
        try:
            register(registry)
        except AtlasPatchError as exc:
            raise ConfigError(f"--feature-plugin {plugin}: {one_line(exc)}") from None
        except Exception as exc:
            raise ConfigError(f"--feature-plugin {plugin}: {ENTRY_POINT} failed: {one_line(exc)}") from None
