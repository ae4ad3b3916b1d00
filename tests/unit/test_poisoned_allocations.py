"""The kernel tests' NaN-poisoned allocations poison and leave torch as it was: in particular
`with torch.device(...)` still places models built after them (torch learns its factory functions
once per process, so this runs in a fresh interpreter where the poison comes first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.unit.kernel_interpreter import poisoned_allocations

ROOT = Path(__file__).resolve().parents[2]

FIRST_USE_UNDER_POISON = """
import torch
from tests.unit.kernel_interpreter import poisoned_allocations
with poisoned_allocations():
    with torch.device("meta"):
        inside = torch.empty(2).device.type
with torch.device("meta"):
    after = torch.nn.Linear(3, 4).weight.device.type
print(inside, after)
"""


def test_allocations_start_as_nan_and_torch_is_restored():
    with poisoned_allocations():
        assert torch.isnan(torch.empty(3)).all()
        assert (torch.empty_like(torch.zeros(2, dtype=torch.int32)) == -99).all()
    assert not hasattr(torch.empty, "__code__")   # the builtin again, not the wrapper


def test_device_context_places_tensors_after_poison_in_a_fresh_process():
    done = subprocess.run([sys.executable, "-c", FIRST_USE_UNDER_POISON], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["meta", "meta"]
