"""The loss contract of everything that evaluates a model's loss outside its training step.

Landscape measures, :class:`~lightning_autoopt.callbacks.SharpnessProbe` and the benchmarks all need "the loss of this
module on this batch" for modules and batches they did not write. One contract covers them:

    ``loss_fn(module, batch) -> scalar tensor`` (the mean loss of the batch, differentiable in the parameters)

A loss is chosen by :func:`resolve_loss`, in this order:

1. ``loss_fn`` given as a callable, or as a dotted import path (``"mypkg.losses.my_loss"``, YAML-friendly; a class
   at that path is instantiated without arguments);
2. ``loss_fn="cross_entropy"`` / ``"mse"``: the supervised convention, ``criterion(module(inputs), target)``,
   checked against the model's output on a real batch (a cross-entropy on one output per sample is refused);
3. ``loss_fn="training_step"``: the loss returned by the LightningModule's own ``training_step`` (logging muted);
4. otherwise (``None`` / ``"auto"``): the module's ``landscape_loss(batch)`` method if it has one; else the loss
   the module returns from ``forward`` (a 0-dim tensor, a dict with ``"loss"`` or an object with ``.loss``); else
   the supervised convention when the output and the target decide it (integer targets and >= 2 class scores:
   cross-entropy; float targets with one prediction per target value: MSE); else ``training_step`` for an
   automatic-optimization LightningModule; else a ``ValueError`` that says which option to use.

Batches may be tensors, tuples/lists of any length, or dicts. How the module is called on them is read from the
signature of its ``forward`` (:class:`BatchLayout`): ``module(x)`` for ``(x, y, ...)`` batches, ``module(*batch)``
when ``forward`` needs several positional inputs (e.g. Lightning's demo ``LightningTransformer.forward(inputs,
target)``), ``module(**batch)`` restricted to the names ``forward`` takes for dicts (the target is the first of
``y``/``target``/``targets``/``label``/``labels`` that ``forward`` does not take), ``module(batch)`` for a tensor.

Nothing here needs a ``Trainer``: the contract works for plain ``nn.Module`` s.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn

BatchLoss = Callable[[nn.Module, Any], Tensor]
"""The contract: ``loss_fn(module, batch) -> scalar tensor``."""

LossSpec = str | BatchLoss | None
"""What a user may pass as ``loss_fn``: ``None``/``"auto"``, a built-in name, a dotted import path, or a callable."""

BUILTIN_LOSSES = ("auto", "cross_entropy", "mse", "training_step")
TARGET_KEYS = ("y", "target", "targets", "label", "labels")
LANDSCAPE_LOSS_METHOD = "landscape_loss"

_OPTIONS = (
    "give `loss_fn` as a callable `loss_fn(module, batch) -> scalar` or its import path ('mypkg.losses.my_loss'), "
    f"define `{LANDSCAPE_LOSS_METHOD}(self, batch) -> scalar` on the module, or use (x, y) batches with "
    "loss_fn='cross_entropy'/'mse'"
)


# ----------------------------------------------------------------------------------------------------- batch helpers
def batch_size(batch: Any) -> int:
    """Number of samples in ``batch``: the leading size of its first tensor (1 if it holds none or a 0-dim one)."""
    for leaf in _tensors(batch):
        return int(leaf.shape[0]) if leaf.ndim > 0 else 1
    return 1


def _tensors(batch: Any) -> Iterator[Tensor]:
    if isinstance(batch, Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for value in batch.values():
            yield from _tensors(value)
    elif isinstance(batch, (tuple, list)):
        for value in batch:
            yield from _tensors(value)


def cast_batch(batch: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
    """``batch`` with every tensor moved to ``device`` and every floating tensor cast to ``dtype`` (same structure)."""

    def move(t: Tensor) -> Tensor:
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.to(device) if device is not None else t

    return apply_to_collection(batch, Tensor, move)


def import_object(path: str) -> Any:
    """The object at the dotted import path ``path`` (``"pkg.module.name"``; attributes may be nested).

    Raises:
        ValueError: If nothing can be imported at ``path`` (the message says what was tried).
    """
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            break
        return obj
    raise ValueError(f"`loss_fn`={path!r} is not importable: no module in that path defines {parts[-1]!r}.")


# ----------------------------------------------------------------------------------------------------- how to call
@dataclass(frozen=True)
class BatchLayout:
    """How a module is called on a batch, and where the batch keeps its target.

    Attributes:
        call: ``"positional"`` (``module(*batch[:num_inputs])``), ``"kwargs"`` (``module(**{k: batch[k] for k in
            keys})``) or ``"whole"`` (``module(batch)``).
        num_inputs: Leading batch entries passed with ``"positional"``.
        keys: Dict keys passed with ``"kwargs"``.
        target: Index (tuple/list batches) or key (dicts) of the target; ``None`` when the batch has none.
    """

    call: Literal["positional", "kwargs", "whole"] = "positional"
    num_inputs: int = 1
    keys: tuple[str, ...] = ()
    target: int | str | None = 1

    def forward(self, module: nn.Module, batch: Any) -> Any:
        """The module's output on ``batch``."""
        if self.call == "positional":
            return module(*batch[: self.num_inputs])
        if self.call == "kwargs":
            return module(**{k: batch[k] for k in self.keys})
        return module(batch)

    def target_of(self, batch: Any) -> Tensor | None:
        """The batch's target tensor, or ``None``."""
        if self.target is None:
            return None
        if isinstance(self.target, int):
            ok = isinstance(batch, (tuple, list)) and len(batch) > self.target
        else:
            ok = isinstance(batch, Mapping) and self.target in batch
        value = batch[self.target] if ok else None
        return value if isinstance(value, Tensor) else None

    def describe(self) -> str:
        if self.call == "positional":
            return "module(x)" if self.num_inputs == 1 else f"module(*batch[:{self.num_inputs}])"
        if self.call == "kwargs":
            return f"module(**{{{', '.join(self.keys)}}})"
        return "module(batch)"


def infer_layout(module: nn.Module, batch: Any) -> BatchLayout:
    """The :class:`BatchLayout` for ``module`` and batches shaped like ``batch``, read from ``forward``'s signature."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is inspect.Parameter.empty]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    max_inputs = math.inf if varargs else sum(p.kind in positional for p in params)
    if isinstance(batch, Mapping):
        named = [
            p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        any_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        keys = tuple(str(k) for k in batch if any_kw or k in {p.name for p in named})
        target = next((k for k in TARGET_KEYS if k in batch and k not in keys), None)
        needed = {p.name for p in named if p.default is inspect.Parameter.empty}
        positional_only = any(p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty for p in params)
        if keys and needed <= set(keys) and not positional_only:
            return BatchLayout("kwargs", keys=keys, target=target)
        return BatchLayout("whole", target=target)
    if isinstance(batch, (tuple, list)) and len(batch) > 0:
        index = 1 if len(batch) >= 2 else None
        if 2 <= len(required) <= len(batch) and len(required) <= max_inputs:
            return BatchLayout("positional", num_inputs=len(required), target=index)
        return BatchLayout("positional", num_inputs=1, target=index)
    return BatchLayout("whole", target=None)


# ----------------------------------------------------------------------------------------------------- the losses
def _loss_in(output: Any) -> Tensor | None:
    """The loss carried by a module's output: a 0-dim tensor, ``output["loss"]`` or ``output.loss``."""
    if isinstance(output, Mapping):
        output = output.get("loss")
    elif not isinstance(output, Tensor) and isinstance(getattr(output, "loss", None), Tensor):
        output = output.loss
    if isinstance(output, Tensor) and output.ndim == 0 and output.is_floating_point():
        return output
    return None


def _looks_like_probabilities(scores: Tensor, class_dim: int) -> bool:
    with torch.no_grad():
        s = scores.detach().float()
        sums = s.sum(dim=class_dim)
        return bool((s >= 0).all() and (s <= 1).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4))


def _class_scores(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor] | str:
    """``(scores (N, C), labels (N,))`` when ``output`` holds class scores for the integer ``target``; else why not."""
    if output.ndim >= 2 and output.shape[:-1] == target.shape:  # classes on the last dim, e.g. (B, T, V)
        scores, labels, class_dim = output.reshape(-1, output.shape[-1]), target.reshape(-1), -1
    elif output.ndim >= 2 and output.shape[0] == target.shape[0] and output.shape[2:] == target.shape[1:]:
        scores, labels, class_dim = output.movedim(1, -1).reshape(-1, output.shape[1]), target.reshape(-1), 1
    elif output.ndim == 2 and output.shape[0] == target.numel():  # flattened tokens, e.g. (B*T, V) vs (B, T)
        scores, labels, class_dim = output, target.reshape(-1), 1
    elif output.numel() == target.numel():
        return (
            f"the module returns one value per target ({tuple(output.shape)} for targets {tuple(target.shape)}); "
            "cross-entropy needs >= 2 class scores per sample. For regression use float targets or loss_fn='mse'; "
            "for a binary classifier with one logit give a `loss_fn` (e.g. binary_cross_entropy_with_logits)"
        )
    else:
        return f"output shape {tuple(output.shape)} does not match the target shape {tuple(target.shape)}"
    if scores.shape[-1] < 2:
        return f"cross-entropy needs >= 2 class scores per sample, the module returns {scores.shape[-1]}"
    if _looks_like_probabilities(output, class_dim):
        return (
            "the module returns probabilities (non-negative, summing to 1); cross-entropy expects logits or "
            "log-probabilities: return logits from forward or give a `loss_fn`"
        )
    return scores, labels


class SupervisedLoss:
    """The ``(x, y)`` convention: ``criterion(module(inputs), target)`` with the layout of the batch.

    ``"cross_entropy"`` accepts integer targets with class scores on dim 1, on the last dim, or flattened (a language
    model's ``(B*T, V)`` log-probabilities against ``(B, T)`` tokens: cross-entropy of log-probabilities is their
    negative log-likelihood), and float targets of the output's shape (class probabilities). ``"mse"`` needs one
    prediction per target value. :meth:`check` refuses anything else, so a loss that does not fit the model is an
    error, never a number.

    Args:
        criterion: ``"cross_entropy"`` or ``"mse"``.
        layout: How to call the module and find the target (default: ``module(batch[0])`` vs ``batch[1]``).

    Example::

        loss = SupervisedLoss("cross_entropy")
        value = loss(model, (x, y))
    """

    def __init__(self, criterion: Literal["cross_entropy", "mse"], layout: BatchLayout | None = None) -> None:
        if criterion not in ("cross_entropy", "mse"):
            raise ValueError(f"`criterion` must be 'cross_entropy' or 'mse', got {criterion!r}.")
        self.criterion = criterion
        self.layout = layout or BatchLayout()

    def __repr__(self) -> str:
        return f"SupervisedLoss({self.criterion!r}: {self.layout.describe()} vs the target)"

    def _pair(self, module: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
        target = self.layout.target_of(batch)
        if target is None:
            raise ValueError(f"{self!r}: the batch has no target tensor ({_structure(batch)}); {_OPTIONS}.")
        output = self.layout.forward(module, batch)
        if not isinstance(output, Tensor):
            raise ValueError(f"{self!r}: forward returned {type(output).__name__}, not a tensor; {_OPTIONS}.")
        return output, target

    def why_not(self, output: Tensor, target: Tensor) -> str | None:
        """Why this criterion does not fit ``output`` and ``target`` (``None`` when it does)."""
        if not output.is_floating_point():
            return f"the module's output has dtype {output.dtype}, not a floating dtype"
        if self.criterion == "mse":
            if not target.is_floating_point():
                return f"MSE needs float targets, got {target.dtype} (class labels: use 'cross_entropy')"
            if output.numel() != target.numel():
                return f"MSE needs one prediction per target value: output {tuple(output.shape)}, target " + str(
                    tuple(target.shape)
                )
            return None
        if target.is_floating_point():
            if output.shape != target.shape:
                return f"float targets {tuple(target.shape)} must be class probabilities of the output's shape " + str(
                    tuple(output.shape)
                )
            if output.ndim < 2 or output.shape[1] < 2:
                return (
                    f"the module returns one value per target ({tuple(output.shape)}); cross-entropy needs >= 2 "
                    "class scores per sample (over one class it is 0 whatever the weights). For regression use "
                    "loss_fn='mse'"
                )
            if not _looks_like_probabilities(target, 1):
                return "float targets are not class probabilities (rows summing to 1); for regression use 'mse'"
            return None
        if target.dtype == torch.bool:
            return "boolean targets are not class labels; give a `loss_fn` (e.g. binary_cross_entropy_with_logits)"
        found = _class_scores(output, target)
        return found if isinstance(found, str) else None

    def check(self, module: nn.Module, batch: Any) -> None:
        """Raise ``ValueError`` (with the options) if the criterion does not fit the module's output on ``batch``."""
        with torch.no_grad():
            output, target = self._pair(module, batch)
        reason = self.why_not(output, target)
        if reason is not None:
            raise ValueError(f"loss_fn={self.criterion!r} does not fit this model: {reason}. Instead, {_OPTIONS}.")

    def __call__(self, module: nn.Module, batch: Any) -> Tensor:
        output, target = self._pair(module, batch)
        if self.criterion == "mse":
            # = F.mse_loss, written out: F.mse_loss has no working forward-over-reverse rule in recent torch
            # ("ZeroTensors are immutable" under jvp(grad(...))), which the "func" HVP backend needs.
            return (output.reshape(target.shape) - target.to(output.dtype)).pow(2).mean()
        if target.is_floating_point():
            return F.cross_entropy(output, target.to(output.dtype))
        found = _class_scores(output, target)
        if isinstance(found, str):
            raise ValueError(f"loss_fn='cross_entropy' does not fit this model: {found}.")
        return F.cross_entropy(*found)

    def predict(self, module: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
        """``(scores (N, C), labels (N,))``: class scores and integer labels (for accuracy and entropy measures)."""
        output, target = self._pair(module, batch)
        if self.criterion != "cross_entropy" or target.is_floating_point():
            raise ValueError(f"{self!r} has no class labels to score predictions against.")
        found = _class_scores(output, target)
        if isinstance(found, str):
            raise ValueError(found)
        return found


class ForwardLoss:
    """The module's ``forward`` returns the loss (a 0-dim tensor, a dict with ``"loss"``, or an object with ``.loss``).

    Args:
        layout: How to call the module on a batch.
    """

    def __init__(self, layout: BatchLayout | None = None) -> None:
        self.layout = layout or BatchLayout("whole", target=None)

    def __repr__(self) -> str:
        return f"ForwardLoss({self.layout.describe()} returns the loss)"

    def __call__(self, module: nn.Module, batch: Any) -> Tensor:
        loss = _loss_in(self.layout.forward(module, batch))
        if loss is None:
            raise ValueError(f"{self!r}: forward did not return a scalar loss; {_OPTIONS}.")
        return loss


class MethodLoss:
    """The module's own ``landscape_loss(batch) -> scalar`` (the documented optional method of the contract)."""

    def __repr__(self) -> str:
        return f"MethodLoss(module.{LANDSCAPE_LOSS_METHOD}(batch))"

    def __call__(self, module: nn.Module, batch: Any) -> Tensor:
        return getattr(module, LANDSCAPE_LOSS_METHOD)(batch)


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def muted_logging(module: nn.Module) -> Iterator[None]:
    """Turn the module's ``log``/``log_dict`` into no-ops for the duration (a probe must not change logged metrics)."""
    names = ("log", "log_dict")
    saved = {n: module.__dict__[n] for n in names if n in module.__dict__}
    for n in names:
        module.__dict__[n] = _no_log
    try:
        yield
    finally:
        for n in names:
            module.__dict__.pop(n, None)
        module.__dict__.update(saved)


class TrainingStepLoss:
    """The loss returned by a LightningModule's ``training_step(batch, 0)``: exactly the objective it trains on.

    ``self.log``/``self.log_dict`` are muted during the call, so probing never changes logged metrics. Requires
    automatic optimization: a manual-optimization ``training_step`` steps its optimizers and must never be called
    by a probe. ``training_step`` should have no other side effects (counters, EMA teachers, ...).
    """

    def __repr__(self) -> str:
        return "TrainingStepLoss(module.training_step(batch, 0))"

    @staticmethod
    def why_not(module: nn.Module) -> str | None:
        """Why ``training_step`` cannot serve as the loss of ``module`` (``None`` when it can)."""
        step = getattr(module, "training_step", None)
        if step is None:
            return f"{type(module).__name__} has no training_step"
        if getattr(module, "automatic_optimization", True) is False:
            return (
                f"{type(module).__name__} uses manual optimization, so its training_step steps optimizers and "
                "cannot be called to evaluate a loss"
            )
        return None

    def __call__(self, module: nn.Module, batch: Any) -> Tensor:
        step: Callable[..., Any] = getattr(module, "training_step")  # noqa: B009 -- not on nn.Module
        try:
            takes_index = len(inspect.signature(step).parameters) >= 2
        except (TypeError, ValueError):
            takes_index = True
        with muted_logging(module):
            output = step(batch, 0) if takes_index else step(batch)
        loss = _loss_in(output)
        if loss is None:
            raise ValueError(
                f"training_step returned {type(output).__name__}, not a scalar loss (or a dict with 'loss'); "
                f"{_OPTIONS}."
            )
        return loss


# ----------------------------------------------------------------------------------------------------- resolution
def _structure(batch: Any) -> str:
    if isinstance(batch, Tensor):
        return f"a tensor {tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return "a dict with keys " + ", ".join(map(repr, batch))
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)}"
    return f"a {type(batch).__name__}"


def _check_scalar(loss: BatchLoss, module: nn.Module, batch: Any) -> None:
    with torch.no_grad():
        value = loss(module, batch)
    if not isinstance(value, Tensor) or value.numel() != 1 or not value.is_floating_point():
        what = type(value).__name__ if not isinstance(value, Tensor) else f"a {value.dtype} tensor {tuple(value.shape)}"
        raise ValueError(f"`loss_fn` {loss!r} must return a scalar floating tensor (the mean loss), got {what}.")


def check_loss_spec(spec: LossSpec) -> None:
    """Validate a ``loss_fn`` argument without a model (at construction): names, import paths, callables.

    Raises:
        ValueError: For an unknown name, a path that does not import, or a non-callable object.
    """
    if spec is None or callable(spec):
        return
    if not isinstance(spec, str):
        raise ValueError(
            f"`loss_fn` must be None, one of {BUILTIN_LOSSES}, an import path or a callable, got {spec!r}."
        )
    if spec in BUILTIN_LOSSES:
        return
    if "." not in spec:
        raise ValueError(
            f"`loss_fn` must be one of {BUILTIN_LOSSES}, a dotted import path like 'mypkg.losses.my_loss', "
            f"or a callable, got {spec!r}."
        )
    obj = import_object(spec)
    if not callable(obj):
        raise ValueError(f"`loss_fn`={spec!r} imports {type(obj).__name__}, which is not callable.")


def resolve_loss(spec: LossSpec, module: nn.Module, batch: Any) -> BatchLoss:
    """Turn a ``loss_fn`` argument into a :data:`BatchLoss` for ``module``, checked on one real ``batch``.

    The module is evaluated as given (callers put it in eval mode with :func:`~lightning_autoopt.landscape.loss.
    evaluation_mode`); no gradients are recorded. See the module docstring for the order of the options.

    Args:
        spec: ``None``/``"auto"``, ``"cross_entropy"``, ``"mse"``, ``"training_step"``, a dotted import path or a
            callable ``loss_fn(module, batch) -> scalar``.
        module: The model (an ``nn.Module``; LightningModules get the ``training_step`` option too).
        batch: One batch as the loss will see it (on the module's device).

    Returns:
        The loss callable. Built-in ones are :class:`SupervisedLoss` (which also offers ``predict`` for accuracy
        and entropy measures), :class:`ForwardLoss`, :class:`MethodLoss` and :class:`TrainingStepLoss`.

    Raises:
        ValueError: If no option fits, or the chosen one does not fit the model (the message names the options).
    """
    check_loss_spec(spec)
    loss: BatchLoss
    if callable(spec):
        loss = spec
    elif spec in ("cross_entropy", "mse"):
        supervised = SupervisedLoss(spec, infer_layout(module, batch))  # type: ignore[arg-type]
        supervised.check(module, batch)
        loss = supervised
    elif spec == "training_step":
        reason = TrainingStepLoss.why_not(module)
        if reason is not None:
            raise ValueError(f"loss_fn='training_step' cannot be used: {reason}. Instead, {_OPTIONS}.")
        loss = TrainingStepLoss()
    elif spec not in (None, "auto"):
        obj = import_object(str(spec))
        loss = cast(BatchLoss, obj() if inspect.isclass(obj) else obj)
    else:
        loss = _auto_loss(module, batch)
    _check_scalar(loss, module, batch)
    return loss


def _auto_loss(module: nn.Module, batch: Any) -> BatchLoss:
    if callable(getattr(module, LANDSCAPE_LOSS_METHOD, None)):
        return MethodLoss()
    reasons: list[str] = []
    layout = infer_layout(module, batch)
    try:
        with torch.no_grad():
            output = layout.forward(module, batch)
    except Exception as err:  # noqa: BLE001 -- a forward that cannot take this batch is one option ruled out
        output = None
        reasons.append(f"{layout.describe()} raised {type(err).__name__}: {err}")
    if output is not None:
        if _loss_in(output) is not None:
            return ForwardLoss(layout)
        target = layout.target_of(batch)
        if target is None:
            reasons.append(f"the batch ({_structure(batch)}) has no target for a supervised loss")
        elif not isinstance(output, Tensor):
            reasons.append(f"{layout.describe()} returned {type(output).__name__}, neither a loss nor a tensor")
        else:
            criterion: Literal["cross_entropy", "mse"] = "mse" if target.is_floating_point() else "cross_entropy"
            supervised = SupervisedLoss(criterion, layout)
            reason = supervised.why_not(output, target)
            if reason is None:
                return supervised
            reasons.append(f"{criterion} on {layout.describe()}: {reason}")
    reason = TrainingStepLoss.why_not(module)
    if reason is None:
        return TrainingStepLoss()
    reasons.append(reason)
    raise ValueError(
        f"Could not pick a loss for {type(module).__name__} with batches of {_structure(batch)}: "
        + "; ".join(reasons)
        + f". To measure it, {_OPTIONS}."
    )


def has_class_scores(loss: BatchLoss) -> bool:
    """Whether ``loss`` can give class scores and labels (``predict``), as accuracy and entropy measures need."""
    return callable(getattr(loss, "predict", None)) and not (
        isinstance(loss, SupervisedLoss) and loss.criterion != "cross_entropy"
    )


def predictions(loss: BatchLoss, module: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
    """``loss.predict(module, batch)``: ``(scores (N, C), labels (N,))``.

    Raises:
        ValueError: If the loss cannot give class scores (the message names the options).
    """
    if not has_class_scores(loss):
        raise ValueError(
            f"This measure needs class scores and labels, but the loss {loss!r} has none. Use (x, y) classification "
            "batches with loss_fn=None/'cross_entropy', or give a `loss_fn` object with a "
            "`predict(module, batch) -> (scores (N, C), labels (N,))` method."
        )
    return loss.predict(module, batch)  # type: ignore[attr-defined]


def describe_loss(loss: BatchLoss) -> str:
    """A one-line description of a resolved loss (for logs and error messages)."""
    return repr(loss) if not inspect.isfunction(loss) else f"{loss.__module__}.{loss.__qualname__}"


__all__ = [
    "BUILTIN_LOSSES",
    "BatchLayout",
    "BatchLoss",
    "ForwardLoss",
    "LossSpec",
    "MethodLoss",
    "SupervisedLoss",
    "TrainingStepLoss",
    "batch_size",
    "cast_batch",
    "check_loss_spec",
    "describe_loss",
    "has_class_scores",
    "import_object",
    "infer_layout",
    "muted_logging",
    "predictions",
    "resolve_loss",
]
