"""The Ray engine: a stage's `map` runs on a pool of Ray actors, on one machine or a cluster.

Plain Ray actors (`ray.remote` classes), not `ray.data`'s `map_batches` + `ActorPoolStrategy`: the unit negmine
resumes from is a whole shard (encode) or query chunk (search) that the stage already cuts, and each is written
atomically as soon as it is done, so ray.data's re-batching and streaming executor would add a scheduler between
the stage and its files without adding anything; actors hold the model or index once, as ray.data's would.
An actor killed mid-item (SIGKILL, a lost node) is restarted and the item retried (`max_restarts`,
`max_task_retries`); items are idempotent (a shard's file is replaced atomically), so a retry never leaves half a
file. Results come back in the items' order with at most two items in flight an actor, so the driver holds a
bounded amount of work whatever the corpus size.

The cache must be on storage every node sees (a shared filesystem) under the same path: workers read the ingest
tables and write shards there. A relative cache folder on a cluster of several nodes is refused.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from negmine.errors import ConfigError, NegmineError

log = logging.getLogger("negmine.engine")
IN_FLIGHT_PER_WORKER = 2  # one running, one queued: the actor never waits, the driver holds little


def import_ray():
    """Ray, or one line saying how to get it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("[run] engine = \"ray\" needs Ray, which is not installed: pip install 'negmine[ray]', "
                          "or set [run] engine = \"local\" (--engine local)") from None
    return ray


class _Worker:
    """A Ray actor around one `factory()`: built on its first item, so a failure there is a task error that
    reaches the driver (an actor that fails in its constructor is only reported as dead)."""

    def __init__(self, factory: Callable[[], Callable[[Any], Any]]) -> None:
        self.factory, self.fn = factory, None

    def run(self, item: Any) -> Any:
        if self.fn is None:
            self.fn = self.factory()
        return self.fn(item)


class RayEngine:
    name = "ray"

    def __init__(self, address: str, cache_root: Path) -> None:
        self.ray = import_ray()
        self.address, self.cache_root = address, cache_root
        self.started = False
        if address:  # joining an existing cluster is cheap: check it now, before any work
            self._connect()

    def _connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():  # a caller (a test, a notebook) may have started Ray already
            verbose = logging.getLogger("negmine").isEnabledFor(logging.DEBUG)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a run reports nothing anywhere
            try:
                ray.init(address=self.address or None, include_dashboard=False, log_to_driver=verbose,
                         logging_level=logging.INFO if verbose else logging.ERROR, configure_logging=True)
            except (ConnectionError, ValueError) as exc:
                raise ConfigError(f"[run] ray_address {self.address!r}: cannot join a Ray cluster there ("
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); start one with "
                                  "`ray start --head`, or leave ray_address empty to start a local one") from None
            self.started = True
            log.debug("ray: %s", ray.cluster_resources())
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) > 1 and not Path(self.cache_root).is_absolute():
            raise ConfigError(f"[run] cache_dir {str(self.cache_root)!r} is relative, but the Ray cluster has "
                              f"{len(alive)} nodes: each would resolve it in its own working folder; give an "
                              "absolute path on storage every node mounts (--cache-dir /shared/...)")

    def resources(self) -> dict[str, float]:
        if not self.ray.is_initialized():
            self._connect()
        return self.ray.cluster_resources()

    def map(self, factory: Callable[[], Callable[[Any], Any]], items: Iterable[Any], *, workers: int | None = None,
            gpu: bool = False) -> Iterator[Any]:
        it = iter(items)
        try:
            first = next(it)
        except StopIteration:
            return  # nothing to do starts no cluster
        ray = self.ray
        res = self.resources()
        gpus = int(res.get("GPU", 0)) if gpu else 0
        if gpus:
            n, options = gpus, {"num_gpus": 1, "num_cpus": 1}
        else:  # an actor holds its CPU while it lives: more actors than CPUs would wait forever for one
            cpus = max(1, int(res.get("CPU", 1)))
            n, options = min(workers or cpus, cpus), {"num_cpus": 1}
        actor_cls = ray.remote(_Worker).options(max_restarts=-1, max_task_retries=-1, **options)
        actors = [actor_cls.remote(factory) for _ in range(n)]
        pending: deque = deque()
        try:
            sent = 0
            for item in _chain(first, it):
                pending.append(actors[sent % n].run.remote(item))
                sent += 1
                if len(pending) >= IN_FLIGHT_PER_WORKER * n:
                    yield self._get(pending.popleft())
            while pending:
                yield self._get(pending.popleft())
        finally:
            for a in actors:
                ray.kill(a, no_restart=True)

    def _get(self, ref: Any) -> Any:
        """A worker's result; a user-fixable error raised there is raised here as itself (one line, exit 2)."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (NegmineError, MemoryError, OSError)):
                raise cause from None
            raise

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


__all__ = ["RayEngine", "import_ray"]
