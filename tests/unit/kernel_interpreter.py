"""Running the Triton kernels on CPU tensors through Triton's interpreter.

`@triton.jit` reads TRITON_INTERPRET when a function is decorated, at import: the decorator makes
an interpreted or a compiled function then, and setting the variable later changes nothing for
modules already loaded. That holds for triton.language itself (tl.zeros, tl.max, tl.cdiv are
@triton.jit functions), and in a whole test session something imports triton before these tests
run. So this context sets the variable, reloads the named kernel modules, and swaps triton's own
compiled-mode library functions for interpreted ones; on exit it undoes all three, so tests
elsewhere in the same process see the kernels as they were."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

import torch


def _interpret_triton_library() -> list[tuple[object, str, object]]:
    """Replace the compiled-mode @triton.jit functions of triton.language (modules and the tensor
    class) by interpreted ones; returns what to put back."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    owners = [m for name, m in list(sys.modules.items())
              if name.startswith("triton.language") and m is not None] + [tl.tensor]
    swapped = []
    for owner in owners:
        for name, value in list(vars(owner).items()):
            if isinstance(value, JITFunction):
                setattr(owner, name, InterpretedFunction(value.fn))
                swapped.append((owner, name, value))
    return swapped


@contextlib.contextmanager
def interpreted(*module_names: str) -> Iterator[list[ModuleType]]:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    swapped = _interpret_triton_library()
    try:
        yield [importlib.reload(importlib.import_module(name)) for name in module_names]
    finally:
        for owner, name, value in swapped:
            setattr(owner, name, value)
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
        for name in module_names:
            importlib.reload(sys.modules[name])


TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None,
                 scale: float = 1.0) -> None:
    """Every element written (no NaN left from the poison) and ||out - ref|| / ||ref|| within
    the dtype's rounding, times `scale` for long reductions."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert not torch.isnan(out).any(), "output has NaN: an element was not written"
    tol = TOLERANCE[dtype or ref.dtype] * scale
    err = (out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)
    assert err <= tol, f"relative error {err:.3g} > {tol:.3g}"


@contextlib.contextmanager
def poisoned_allocations() -> Iterator[None]:
    """Inside, torch.empty / torch.empty_like return NaN-filled float tensors (integers: -99),
    so an output element or a workspace entry that a kernel forgets to write fails the check."""
    empty, empty_like = torch.empty, torch.empty_like
    # `with torch.device(...)` learns torch's factory functions once per process, on first use:
    # let it learn the real ones, not the wrappers below (else every later model is built on
    # the CPU whatever device it names).
    with torch.device("meta"):
        empty(0)

    def poison(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan") if t.is_floating_point() else -99)

    torch.empty = lambda *a, **k: poison(empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like
