"""Numeric precision of a trial's step: autocast, fp32 islands for statistics, gradient scaling, compile.

A trial runs its forward under autocast in ``bf16`` or ``fp16`` (``optim.precision``); the
weights, the optimizer state and the checkpoints stay fp32 (master weights). Statistics whose
value or gradient a low-precision mantissa would ruin run in fp32 even inside autocast: their
functions are wrapped with ``fp32`` where they are defined, each with its reason. ``fp16`` needs a
gradient scaler (its range is too small for small gradients); ``bf16`` has fp32's range and does not.
"""

from __future__ import annotations

import functools
import sys
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator, TypeVar

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
AUTOCAST_DEVICES = ("cpu", "cuda")

F = TypeVar("F", bound=Callable[..., Any])


def resolve(precision: str, device_type: str) -> str:
    """``auto`` is bf16 on CUDA and fp32 elsewhere: bf16 matmuls on a CPU without bf16 units are
    ~5× slower than fp32 (DESIGN.md §6)."""
    if precision not in PRECISIONS:
        raise ValueError(f"optim.precision={precision!r}: unknown; choose among {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def _upcast(x: Any) -> Any:
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in LOW.values() else x


@contextmanager
def full_precision() -> Iterator[None]:
    """Autocast off on every device type, and IEEE fp32 matmuls instead of TF32 on CUDA, until exit.

    Only the forward pass is covered: backward kernels run when the loss is differentiated, after
    this context has closed (their inputs are fp32 all the same; on CUDA they may use TF32).
    """
    with ExitStack() as stack:
        for device_type in AUTOCAST_DEVICES:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        matmul = torch.backends.cuda.matmul
        # Inside a compiled graph the backend flag cannot be traced (a graph break); there the
        # compiler chooses the matmul kernels.
        if not torch.compiler.is_compiling() and matmul.fp32_precision == "tf32":
            matmul.fp32_precision = "ieee"
            stack.callback(setattr, matmul, "fp32_precision", "tf32")
        yield


def fp32(fn: F) -> F:
    """``fn`` run under ``full_precision`` with its bf16/fp16 tensor arguments upcast to fp32
    (other dtypes, e.g. float64 in tests, pass unchanged)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with full_precision():
            return fn(*(_upcast(a) for a in args), **{k: _upcast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


class Precision:
    """The step's precision on one device: autocast context, gradient scaler (fp16), TF32 (CUDA)."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.name = resolve(precision, device.type)
        self.device_type = device.type
        if self.name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(
                f"optim.precision='bf16': {torch.cuda.get_device_name(device)} has no bf16; use fp16 or fp32"
            )
        if device.type == "cuda":
            # The fp32 parts (every matmul of an fp32 trial, the layers autocast keeps in fp32) on
            # tensor cores; the statistics opt out through ``full_precision``.
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.name == "fp16")

    def autocast(self) -> ContextManager[Any]:
        """The context of the forward pass (and the loss): plain fp32 for ``fp32``."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=LOW[self.name])

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimizer step; under fp16 the loss is scaled and a step whose gradients
        overflowed is skipped (the scale then shrinks), as ``GradScaler`` does."""
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty unless fp16): part of the checkpoint, so resume stays exact."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.scaler.load_state_dict(state)


def compile_module(module: nn.Module, **options: Any) -> None:
    """Compile ``module``'s forward with ``torch.compile`` in place (parameters and ``state_dict``
    keys unchanged, so checkpoints are those of the eager module).

    Compiling can fail when it is asked for or at the first call of a new input shape (a missing
    C compiler, an unsupported op, a bad ``options``): then one warning line goes to stderr and the
    module runs eagerly from then on, so a trial never fails for it. Compile after any copy of the
    module is made (the copy would share the compiled forward).
    """
    eager = module.forward
    try:
        compiled = torch.compile(eager, **options)
    except Exception as err:  # noqa: BLE001 - whatever compile raises, eager works
        _compile_failed(err)
        return
    failed = False

    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - a real error of the model recurs in eager
                failed = True
                _compile_failed(err)
        return eager(*args, **kwargs)

    module.forward = forward  # type: ignore[method-assign]


def _compile_failed(err: Exception) -> None:
    cause = getattr(err, "inner_exception", None) or err  # a backend's own error, not dynamo's wrapper
    reason = (str(cause).strip().splitlines() or [""])[0][:200]
    message = f"warning: torch.compile failed ({type(cause).__name__}: {reason}); running eagerly"
    print(message, file=sys.stderr, flush=True)
