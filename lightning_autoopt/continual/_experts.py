"""Private: build expert / selector networks from a YAML-friendly spec (an architecture name or a class path)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from lightning_autoopt.models.nets import ARCHS, build_for_input


def _import_class(path: str) -> type:
    module_name, _, cls_name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"`class_path` must be a dotted path such as 'my_pkg.nets.MyNet', got {path!r}.")
    return getattr(importlib.import_module(module_name), cls_name)


def check_spec(spec: str | dict[str, Any], name: str) -> None:
    """Raise a ValueError naming ``name`` if ``spec`` is neither a known architecture nor a class-path dict."""
    if isinstance(spec, str):
        if spec not in ARCHS:
            raise ValueError(f"`{name}` must be one of {ARCHS} or a dict with `class_path`, got {spec!r}.")
        return
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(
            f"`{name}` must be an architecture name {ARCHS} or a dict "
            "{'class_path': 'pkg.module.Net', 'init_args': {...}}, got " + repr(spec)
        )
    unknown = set(spec) - {"class_path", "init_args", "output_arg"}
    if unknown:
        raise ValueError(f"`{name}` has unknown keys {sorted(unknown)}; use class_path, init_args, output_arg.")
    try:
        cls = _import_class(spec["class_path"])
    except (ImportError, AttributeError) as err:
        raise ValueError(f"`{name}.class_path` {spec['class_path']!r} cannot be imported: {err}") from err
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ValueError(f"`{name}.class_path` must name a torch.nn.Module subclass, got {cls!r}.")


def build_module(
    spec: str | dict[str, Any], num_outputs: int, input_shape: Sequence[int], width: int = 32, depth: int = 1
) -> nn.Module:
    """Build a network with ``num_outputs`` outputs for inputs of shape ``input_shape`` (without the batch dim).

    ``spec`` is an architecture of :mod:`lightning_autoopt.models` (``"mlp"``, ``"cnn"``, ``"resnet"``, built with
    ``width``/``depth``) or ``{"class_path": ..., "init_args": {...}, "output_arg": "num_classes"}``, where the
    number of outputs is passed as ``output_arg`` (default ``num_classes``) unless ``init_args`` sets it.
    """
    if isinstance(spec, str):
        return build_for_input(spec, input_shape, num_outputs, width, depth)
    cls = _import_class(spec["class_path"])
    kwargs = dict(spec.get("init_args") or {})
    kwargs.setdefault(spec.get("output_arg", "num_classes"), num_outputs)
    return cls(**kwargs)
