"""Hugging Face "remote code" slide encoders (TITAN, PRISM), loaded offline from a local copy of their repository.

The repository directory is the parent of the resolved weights file: ``DIR/<name>/`` in a model dir, or
``<hub cache>/models--Org--Name/snapshots/<rev>/`` in the Hugging Face cache. Its ``config.json`` names the
configuration and model classes in ``auto_map``; transformers' dynamic-module loader imports them from the
repository's own ``.py`` files (the equivalent of ``trust_remote_code=True``), with the modules cache where
``HF_MODULES_CACHE`` / ``HF_HOME`` say *now*. The model is built with its parameters on the meta device, the
submodules we do not need (PRISM's text decoder) are dropped unallocated, and ``model.safetensors`` is loaded
strictly for everything that is kept. Every failure is a one-line :class:`WeightsError`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import WeightsError, one_line
from ...weights import WeightsSource
from .spec import SlideInputs

SLIDE_EXTRAS_HINT = "pip install 'atlaspatch-nf[slide-encoders]'"
DYNAMIC_PACKAGE = "transformers_modules"  # transformers' package for remote code, inside the modules cache
_LOCK = threading.Lock()  # the loader patches module-level state (modules cache, register_parameter)
_SHOWN_KEYS = 5


# --- errors and the repository's config ---------------------------------------------------------------------------


def repo_error(source: WeightsSource, repo_dir: Path, reason: str) -> WeightsError:
    return WeightsError(f"{source.name} ({source.repo_id}) in {repo_dir}: {reason}")


def _full_copy_hint(source: WeightsSource) -> str:
    return (
        f"the directory must hold the whole repository {source.url}, not only {source.filename} "
        f"(`atlaspatch models download {source.name} --model-dir DIR` copies it)"
    )


def read_repo_config(source: WeightsSource, repo_dir: Path) -> dict[str, Any]:
    """The repository's config.json, which must name its remote code in ``auto_map``."""
    path = repo_dir / "config.json"
    if not path.is_file():
        raise repo_error(source, repo_dir, f"no config.json; {_full_copy_hint(source)}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise repo_error(source, repo_dir, f"config.json is unreadable ({one_line(exc)})") from None
    if not isinstance(config, dict):
        raise repo_error(source, repo_dir, "config.json is not a JSON object")
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not all(isinstance(auto_map.get(k), str) for k in ("AutoConfig", "AutoModel")):
        raise repo_error(source, repo_dir, "config.json has no auto_map with AutoConfig and AutoModel entries")
    return config


# --- importing the remote code ------------------------------------------------------------------------------------


def modules_cache_dir() -> Path:
    """Where transformers keeps remote code, as the environment says now (transformers reads it once, at import)."""
    explicit = os.environ.get("HF_MODULES_CACHE", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME", "").strip()
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
        home = os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "modules"


def _dynamic_submodule(repo_dir: Path) -> str:
    """The package transformers puts a local repository's code in: ``transformers_modules.<dir name>``."""
    from transformers import dynamic_module_utils

    sanitize: Callable[[str], str] = getattr(dynamic_module_utils, "_sanitize_module_name", lambda name: name)
    return f"{DYNAMIC_PACKAGE}.{sanitize(repo_dir.name)}"


def _forget_modules(package: str) -> None:
    """Drop an earlier import of the same-named repository package, so this repository's code is the one run."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def _put_package_first(cache: Path) -> None:
    """Make ``transformers_modules`` resolve subpackages in this cache first (it may come from another one)."""
    top = importlib.import_module(DYNAMIC_PACKAGE)
    location = str(cache / DYNAMIC_PACKAGE)
    if isinstance(top.__path__, list):
        if location in top.__path__:
            top.__path__.remove(location)
        top.__path__.insert(0, location)


@contextlib.contextmanager
def _modules_cache_at(cache: Path, repo_dir: Path) -> Iterator[None]:
    from transformers import dynamic_module_utils

    previous = dynamic_module_utils.HF_MODULES_CACHE
    dynamic_module_utils.HF_MODULES_CACHE = str(cache)
    _forget_modules(_dynamic_submodule(repo_dir))
    try:
        yield
    finally:
        dynamic_module_utils.HF_MODULES_CACHE = previous


def _split_reference(source: WeightsSource, repo_dir: Path, reference: str) -> tuple[str, str]:
    if "--" in reference or reference.count(".") != 1:
        raise repo_error(source, repo_dir, f"auto_map entry {reference!r} is not a 'module.Class' of this repository")
    module, class_name = reference.split(".")
    if not (repo_dir / f"{module}.py").is_file():
        raise repo_error(source, repo_dir, f"{module}.py (named by config.json auto_map) is missing")
    return module, class_name


def _import_class(repo_dir: Path, cache: Path, module: str, class_name: str) -> type:
    from transformers import dynamic_module_utils

    module_path = dynamic_module_utils.get_cached_module_file(str(repo_dir), f"{module}.py", local_files_only=True)
    _put_package_first(cache)
    return dynamic_module_utils.get_class_in_module(class_name, module_path)


def _import_failure(exc: ImportError) -> str:
    """Why the code did not import; a package missing from this environment gets the extras to install."""
    reason = f"its code cannot be imported ({one_line(exc)})"
    missing = getattr(exc, "name", None) or ""
    if "not found in your environment" in str(exc) or (missing and not missing.startswith(DYNAMIC_PACKAGE)):
        reason += f"; install the slide-encoder extras: {SLIDE_EXTRAS_HINT}"
    return reason


def remote_classes(source: WeightsSource, repo_dir: Path, auto_map: Mapping[str, str]) -> tuple[type, type]:
    """The repository's (config class, model class), imported from its own code."""
    references = [_split_reference(source, repo_dir, auto_map[key]) for key in ("AutoConfig", "AutoModel")]
    cache = modules_cache_dir()
    try:
        with _LOCK, _modules_cache_at(cache, repo_dir):
            config_class, model_class = (_import_class(repo_dir, cache, module, name) for module, name in references)
        return config_class, model_class
    except ImportError as exc:
        raise repo_error(source, repo_dir, _import_failure(exc)) from None
    except PermissionError as exc:
        reason = f"cannot write the transformers modules cache {cache} ({one_line(exc)}); set HF_MODULES_CACHE"
        raise repo_error(source, repo_dir, reason) from None
    except Exception as exc:  # a syntax error, a missing class, …: one line naming the repository
        raise repo_error(source, repo_dir, f"its code cannot be imported ({one_line(exc)})") from None


# --- building without allocating ----------------------------------------------------------------------------------


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get every parameter on the meta device (no memory, no init cost); buffers stay real.

    Like accelerate's ``init_empty_weights(include_buffers=False)``: buffers computed in ``__init__`` (ALiBi
    slopes, position tables) keep their values, parameters wait for the checkpoint.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            registered = module._parameters[name]
            fields = {**registered.__dict__, "requires_grad": param.requires_grad}
            module._parameters[name] = type(registered)(registered.to("meta"), **fields)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def drop_submodules(model: nn.Module, names: Iterable[str]) -> None:
    """Set each named (dotted) submodule that exists to None: its parameters leave the model."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            continue
        if child in parent._modules:
            setattr(parent, child, None)


def build_on_meta(
    source: WeightsSource,
    repo_dir: Path,
    classes: tuple[type, type],
    config_overrides: Mapping[str, Any],
    drop: Sequence[str],
) -> nn.Module:
    """The model from the repository's config, parameters on meta, the dropped submodules gone."""
    config_class, model_class = classes
    try:
        config = config_class.from_pretrained(str(repo_dir), local_files_only=True, **config_overrides)
        with _LOCK, parameters_on_meta():
            model = model_class(config)
    except Exception as exc:
        raise repo_error(source, repo_dir, f"the model cannot be built from config.json ({one_line(exc)})") from None
    drop_submodules(model, drop)
    return model


# --- loading the checkpoint ---------------------------------------------------------------------------------------


def is_dropped(key: str, drop: Sequence[str]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in drop)


def read_checkpoint(source: WeightsSource, weights: Path, drop: Sequence[str]) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` outside the dropped prefixes (those are never read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if not is_dropped(key, drop)}  # noqa: SIM118
    except Exception as exc:
        raise repo_error(source, weights.parent, f"{weights.name} is unreadable ({one_line(exc)})") from None


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" … ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def key_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Why ``state`` does not fit ``model`` exactly ('' when it does): missing, unexpected and mis-shaped keys."""
    expected = model.state_dict(keep_vars=True)
    problems = []
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    shapes = [
        f"{key} (file {list(state[key].shape)}, model {list(expected[key].shape)})"
        for key in sorted(expected.keys() & state.keys())
        if tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    if shapes:
        problems.append(f"shape mismatches: {_listed(shapes)}")
    return "; ".join(problems)


def meta_tensors(model: nn.Module) -> list[str]:
    """Parameters and buffers still without data (the checkpoint did not fill them)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, tensor in tensors if tensor.is_meta]


def load_checkpoint(source: WeightsSource, weights: Path, model: nn.Module, drop: Sequence[str]) -> None:
    state = read_checkpoint(source, weights, drop)
    mismatch = key_mismatch(model, state)
    if mismatch:
        raise repo_error(source, weights.parent, f"{weights.name} does not match the model code ({mismatch})")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except Exception as exc:
        raise repo_error(source, weights.parent, f"{weights.name} cannot be loaded ({one_line(exc)})") from None
    unfilled = meta_tensors(model)
    if unfilled:
        raise repo_error(source, weights.parent, f"tensors left without weights: {_listed(unfilled)}")


def load_remote_model(
    source: WeightsSource,
    weights: Path,
    *,
    drop: Sequence[str] = (),
    config_overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The repository's model with its weights, float32 on CPU in eval mode, the ``drop`` submodules set to None.

    ``weights`` is the resolved weights file; its directory is the repository (never resolve symlinks: in the HF
    cache the snapshot directory holds the code, the blobs do not).
    """
    repo_dir = Path(weights).parent
    config = read_repo_config(source, repo_dir)
    classes = remote_classes(source, repo_dir, config["auto_map"])
    model = build_on_meta(source, repo_dir, classes, config_overrides or {}, drop)
    load_checkpoint(source, Path(weights), model, drop)
    model.float().eval().requires_grad_(False)
    return model


# --- running it ---------------------------------------------------------------------------------------------------


def precision_for(device: str) -> str:
    """What the model really computes in: fp16 autocast on CUDA (as TRIDENT runs these models), fp32 elsewhere."""
    return "float16" if device.startswith("cuda") else "float32"


def autocast_for(device: str) -> contextlib.AbstractContextManager[Any]:
    if device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def batch_of(array: np.ndarray, dtype: type[np.generic], device: str) -> torch.Tensor:
    """One slide as a batch of one: ``[1, *array.shape]`` with the given dtype, on the device."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype)).unsqueeze(0).to(device)


def vector_of(output: torch.Tensor) -> np.ndarray:
    """A model output as float32 numpy, without the batch axis of a batch of one."""
    array = output.detach().float().cpu().numpy()
    return array[0] if array.ndim == 2 and array.shape[0] == 1 else array


ForwardCall = Callable[[nn.Module, SlideInputs, str], torch.Tensor]


class RemoteSlideModel:
    """A loaded remote-code model on its device; ``call`` maps one slide's inputs onto the model's own method."""

    def __init__(self, model: nn.Module, device: str, call: ForwardCall) -> None:
        self.model = model.to(device)
        self.device = device
        self.precision = precision_for(device)
        self._call = call

    def encode(self, inputs: SlideInputs) -> np.ndarray:
        with torch.inference_mode(), autocast_for(self.device):
            output = self._call(self.model, inputs, self.device)
        return vector_of(output)
