"""Shared setup of the classifier tests."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_limits

import softmaxce


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI box is small and shared: one BLAS thread and one kernel thread keep the timings sane.
    previous = softmaxce.get_num_threads()
    softmaxce.set_num_threads(1)
    with threadpool_limits(1):
        yield
    softmaxce.set_num_threads(previous)
