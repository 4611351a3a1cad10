"""Reading and writing H5 attributes with AtlasPatch's encoding (dicts/lists as JSON, None as "None")."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np


def encode_attr(value: Any) -> Any:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return value


def decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if value == "None":
        return None
    return value


def write_attrs(node: Any, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        node.attrs[key] = encode_attr(value)


def read_attrs(node: Any) -> dict[str, Any]:
    return {key: decode_attr(value) for key, value in node.attrs.items()}
