"""Engines: where a stage's heavy work runs. The stage code is the same on every engine.

A stage that has work worth spreading hands it to `current().map(factory, items, ...)`: `factory()` builds, once
per worker, a callable (an encoder holding its model, a searcher holding its memory-mapped index) and each item
goes through one worker; results come back in the items' order. The local engine (the default) builds one worker
in this process and runs the items one after another, exactly what the stage did before engines existed. The Ray
engine (`negmine.engine.ray`) runs a pool of Ray actors. The engine is in no cache key: it changes where the work
runs, not what it writes, so a run started on one engine and finished on another reuses what is done.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("negmine.engine")


class Engine(Protocol):
    name: str

    def map(self, factory: Callable[[], Callable[[Any], Any]], items: Iterable[Any], *, workers: int | None = None,
            gpu: bool = False) -> Iterator[Any]:
        """Each item through a worker built by `factory()`, results in the items' order.

        `workers`: how many workers (None: as many as the engine has CPUs); `gpu`: a worker wants a GPU (one
        worker a GPU when the engine has GPUs)."""
        ...


class LocalEngine:
    """Everything in this process, one item after another (`workers` and `gpu` do not apply)."""

    name = "local"

    def map(self, factory: Callable[[], Callable[[Any], Any]], items: Iterable[Any], *, workers: int | None = None,
            gpu: bool = False) -> Iterator[Any]:
        fn = None
        for item in items:
            if fn is None:  # built on first use: nothing to do loads no model
                fn = factory()
            yield fn(item)


_LOCAL = LocalEngine()
_current: ContextVar[Engine] = ContextVar("negmine_engine", default=_LOCAL)


def current() -> Engine:
    """The engine of the run in progress (the local engine outside a run)."""
    return _current.get()


@contextmanager
def use(run: dict[str, Any], cache_root: Path) -> Iterator[Engine]:
    """The engine `[run] engine` names, current for the duration of a run; a cluster it started is stopped after.

    A missing Ray, or a relative cache folder on a cluster of several nodes, stops the run here, before any work.
    """
    if run["engine"] == "local":
        engine: Engine = _LOCAL
        token = _current.set(engine)
        try:
            yield engine
        finally:
            _current.reset(token)
        return
    from negmine.engine.ray import RayEngine

    ray_engine = RayEngine(run["ray_address"], cache_root)
    token = _current.set(ray_engine)
    try:
        yield ray_engine
    finally:
        _current.reset(token)
        ray_engine.close()


__all__ = ["Engine", "LocalEngine", "current", "use"]
