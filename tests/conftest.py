"""Shared fixtures: tiny randomly initialised models built from configs (no download). Shared helper functions
live in tests/helpers.py."""

from __future__ import annotations

import os

import pytest
import torch

from .helpers import tiny_bert_classifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Two threads unless OMP_NUM_THREADS says otherwise: on a CPU shared with another job, two threads each waiting for
# a core the other job holds ran tiny steps several times slower than one.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))


@pytest.fixture
def bert() -> torch.nn.Module:
    return tiny_bert_classifier()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(1))
