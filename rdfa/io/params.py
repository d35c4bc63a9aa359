"""Reading ``params.yaml`` and checking the parameters a stage uses."""
from __future__ import annotations

from pathlib import Path

import yaml


class ParamError(ValueError):
    """A parameter is missing or nonsensical; the message names it."""


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: parameter file not found")
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping at the top level")
    return params


def get(params: dict, key: str, default=...):
    """``params['a']['b']`` for ``key='a.b'``; missing keys raise ``ParamError`` unless ``default`` is given."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not ...:
                return default
            raise ParamError(f"params.yaml: missing parameter '{key}'")
        node = node[part]
    return node


def get_int(params: dict, key: str, minimum: int | None = None, default=...) -> int:
    value = get(params, key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(f"params.yaml: '{key}' must be an integer (got {value!r})")
    if minimum is not None and value < minimum:
        raise ParamError(f"params.yaml: '{key}' must be >= {minimum} (got {value})")
    return value


def get_float(params: dict, key: str, positive: bool = False, default=...) -> float:
    value = get(params, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"params.yaml: '{key}' must be a number (got {value!r})")
    if positive and not value > 0:
        raise ParamError(f"params.yaml: '{key}' must be > 0 (got {value})")
    return float(value)
