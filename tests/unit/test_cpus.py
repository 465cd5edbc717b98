"""The CPU budget: a Ray task's OMP_NUM_THREADS caps the model's threads and the decoders alike."""

from __future__ import annotations

import os

from clip_retrieval.core.cpus import usable_cpus
from clip_retrieval.extract import default_workers
from clip_retrieval.models.onnx import _options


def test_omp_num_threads_caps_the_session_and_the_decoders(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert usable_cpus() == 6 and _options().intra_op_num_threads == 6 and default_workers() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "1")           # what Ray gives a num_cpus=1 task
    assert usable_cpus() == 1 and _options().intra_op_num_threads == 1 and default_workers() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "64")          # asking for more than there is gives what there is
    assert usable_cpus() == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "nonsense")
    assert usable_cpus() == 6
