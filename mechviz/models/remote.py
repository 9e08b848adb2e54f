"""Remote (NDIF) runs of nnsight traces: the failures users hit, turned into messages that say what to do."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def explain_errors(adapter):
    yield
