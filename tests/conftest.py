"""Shared fixtures. The factories themselves live in tests/helpers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.hf_checkpoints import make_hf_checkpoint


@pytest.fixture
def hf_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """hf_checkpoint(family, sharded=False, dtype=torch.float32, seed=0, **config_overrides)
    -> a tiny random HF checkpoint directory (families: llama3, llama2, mistral, qwen2)."""
    def make(family: str, **kwargs) -> Path:
        return make_hf_checkpoint(tmp_path, family, **kwargs)
    return make
