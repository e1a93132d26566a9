"""Several devices on one machine, without Ray: one process a device, each with its own worker.

`[dense] devices = ["cuda:0", "cuda:1"]` (or `["cpu", "cpu"]`) encodes the shards in parallel processes, one
model each; the driver deals the items out in turn, keeps at most two in flight a process and yields the results
in the items' order, so what is written does not depend on the number of devices. Processes are started with
`spawn` (a CUDA context does not survive `fork`). CPU processes share the machine's cores between them, so two CPU
processes do not each start a thread per core.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from negmine.errors import NegmineError

IN_FLIGHT_PER_WORKER = 2


def _serve(factory: Callable[[], Callable[[Any], Any]], threads: int, inbox: Any, outbox: Any) -> None:
    """A device's process: build the worker, then answer (seq, item) until told to stop (None)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    fn = None
    while True:
        job = inbox.get()
        if job is None:
            return
        seq, item = job
        try:
            if fn is None:
                fn = factory()
            outbox.put((seq, True, fn(item)))
        except BaseException as exc:  # sent to the driver, which raises it (one line when it is the user's)
            try:
                outbox.put((seq, False, exc))
            except Exception:
                outbox.put((seq, False, RuntimeError(f"{type(exc).__name__}: {exc}")))
            return


def map_on_devices(factories: list[Callable[[], Callable[[Any], Any]]], devices: list[str],
                   items: Iterable[Any]) -> Iterator[Any]:
    """Each item through one of the processes (`factories[i]()` runs in process i, on `devices[i]`), results in
    the items' order. A process that dies (killed, out of memory) stops the map with an error; the stage's
    finished pieces stay on disk for the rerun."""
    it = iter(items)
    try:
        first = next(it)
    except StopIteration:
        return
    ctx = multiprocessing.get_context("spawn")
    n = len(factories)
    cpus = sum(1 for d in devices if d == "cpu")
    threads = max(1, (os.cpu_count() or 1) // cpus) if cpus else 0
    outbox = ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(n)]
    procs = [ctx.Process(target=_serve, args=(f, threads if d == "cpu" else 0, inboxes[i], outbox), daemon=True)
             for i, (f, d) in enumerate(zip(factories, devices))]
    for p in procs:
        p.start()
    done: dict[int, Any] = {}
    owner: dict[int, int] = {}
    sent = received = 0

    def wait_for(seq: int) -> Any:
        while seq not in done:
            try:
                got, ok, value = outbox.get(timeout=1.0)
            except queue.Empty:
                p = procs[owner[seq]]
                if not p.is_alive():
                    raise RuntimeError(f"the encoder process on {devices[owner[seq]]} died (exit code "
                                       f"{p.exitcode}); run again: finished shards are kept") from None
                continue
            if not ok:
                if isinstance(value, (NegmineError, MemoryError, OSError)):
                    raise value
                raise RuntimeError(f"a worker on {devices[owner[got]]} failed: {value}") from value
            done[got] = value
        return done.pop(seq)

    finished = False
    try:
        for item in _chain(first, it):
            owner[sent] = sent % n
            inboxes[sent % n].put((sent, item))
            sent += 1
            if sent - received >= IN_FLIGHT_PER_WORKER * n:
                yield wait_for(received)
                received += 1
        while received < sent:
            yield wait_for(received)
            received += 1
        finished = True
    finally:
        for q in inboxes:
            q.put(None)
        for p in procs:
            p.join(timeout=10 if finished else 0)  # stopped early (an error, Ctrl-C): no more work is wanted
            if p.is_alive():
                p.kill()
                p.join()


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


__all__ = ["map_on_devices"]
