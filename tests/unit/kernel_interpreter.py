"""Running the Triton kernels on CPU tensors through Triton's interpreter.

`@triton.jit` reads TRITON_INTERPRET when a kernel module is imported (the decorator picks the
interpreted or the compiled function then), so setting the variable later has no effect on modules
that are already loaded. This context sets it and reloads the named kernel modules, and on exit
restores the variable and reloads them again, so tests elsewhere in the same process see the
kernels as they were."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

import torch


@contextlib.contextmanager
def interpreted(*module_names: str) -> Iterator[list[ModuleType]]:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield [importlib.reload(importlib.import_module(name)) for name in module_names]
    finally:
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

    def poison(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan") if t.is_floating_point() else -99)

    torch.empty = lambda *a, **k: poison(empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like
