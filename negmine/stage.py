"""The stage contract: every stage declares its name, code version, what it reads, its parameters and outputs.

A stage's cache key is computed from exactly the parameters object the stage is handed (a frozen `Params`), so a
stage cannot read a setting that is not in its key: reading a name it was not given raises, and the object cannot
be changed after the key is taken. A setting that changes only speed, memory or a location whose content is keyed
some other way is handed over too, but declared in `Stage.unkeyed` with the reason, not left out by omission.
In the manner of DVC's stage cache (hash the declared parameters and dependencies) and PyTerrier's transformers
(one shape for every stage, the pipeline a value one can print).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Config = dict[str, Any]


def freeze(value: Any) -> Any:
    """A deep, immutable copy: mappings become `Params`, lists and tuples become tuples."""
    if isinstance(value, Mapping):
        return Params(value)
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists again (what a cache key and JSON are made of)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


class Params(Mapping[str, Any]):
    """A frozen mapping of a stage's parameters: reading a missing name or changing one raises."""

    __slots__ = ("_data", "_owner")

    def __init__(self, data: Mapping[str, Any], owner: str = "") -> None:
        object.__setattr__(self, "_data", {str(k): freeze(v) for k, v in data.items()})
        object.__setattr__(self, "_owner", owner)

    def __getitem__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            who = f"stage {self._owner!r}" if self._owner else "this stage"
            raise KeyError(f"{name!r} is not a parameter of {who}; declare it in the stage's params so that "
                           "its cache key covers it") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("stage parameters are frozen: the cache key was computed from them")

    def __setitem__(self, name: str, value: Any) -> None:
        raise TypeError("stage parameters are frozen: the cache key was computed from them")

    def __delitem__(self, name: str) -> None:
        raise TypeError("stage parameters are frozen: the cache key was computed from them")

    def __repr__(self) -> str:
        return f"Params({self._data!r})"

    def __reduce__(self):  # picklable, for engines that ship a stage's work to other processes
        return (Params, (thaw(self), self._owner))


class Inputs(Mapping[str, Path]):
    """The entries of the stages a stage declared it reads (their keys are in its key); nothing else.

    `log` is the run so far (each stage's result: key, status, seconds, stats), handed only to a stage that
    declares `reads_log`: it describes the run, not the data (the report), so it is in no key.
    """

    def __init__(self, stage: str, paths: Mapping[str, Path], log: Mapping[str, Any] | None = None) -> None:
        self._stage, self._paths = stage, dict(paths)
        self._log = log

    @property
    def log(self) -> Mapping[str, Any]:
        if self._log is None:
            raise KeyError(f"stage {self._stage!r} does not read the run's log; declare reads_log")
        return self._log

    def __getitem__(self, name: str) -> Path:
        try:
            return self._paths[name]
        except KeyError:
            raise KeyError(f"stage {self._stage!r} does not read {name!r}; add it to the stage's reads") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


@dataclass(frozen=True)
class Context:
    """What parameters may be built from besides the config: the cache folder, model fingerprints, the input
    files' hashes and the provenance of a run's outputs."""

    cache_root: Path
    fingerprint: Callable[[Path], str]  # content hash of a model folder (memoised)
    input_hashes: Mapping[str, str] = field(default_factory=dict)  # the input files' sha256, for ingest
    provenance: Mapping[str, Any] = field(default_factory=dict)  # version, parameters (less unkeyed), input hashes


def _always(cfg: Config) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One cached step: `run(inputs, params, out_dir) -> stats` writes `outputs` into `out_dir`.

    `command` is the CLI step the stage belongs to (sub-stages such as `encode` run under `index`); `reads`
    names the stages whose entries it reads (their keys enter its key); `params(cfg, ctx)` builds its
    parameters once; `unkeyed` names the parameters that do not change what it writes, with the reason;
    `section` is the config section whose settings those names are (so provenance leaves them out too);
    `reads_log`: it is handed the run so far (`Inputs.log`), which no key covers (see `Inputs`).
    Every stage's params are built before any stage runs, so a bad setting or a missing model stops a run first.
    """

    name: str
    version: str
    command: str
    reads: Callable[[Config], tuple[str, ...]]
    params: Callable[[Config, Context], Mapping[str, Any]]
    run: Callable[[Inputs, Params, Path], dict[str, Any]]
    outputs: tuple[str, ...] = ()
    enabled: Callable[[Config], bool] = _always
    unkeyed: Mapping[str, str] = field(default_factory=dict)
    section: str | None = None
    resumable: bool = False  # computes into a partial folder that survives a crash (see StageCache.run)
    reads_log: bool = False
    files: Callable[[Config, Context], Mapping[str, str]] | None = None  # input files (path: sha256) in the key

    def key_params(self, params: Params) -> dict[str, Any]:
        """Exactly the handed parameters, less the declared unkeyed ones."""
        return {k: thaw(v) for k, v in params.items() if k not in self.unkeyed}

    @property
    def output(self) -> str | None:
        """The file a user asks for when running up to this stage (its first output)."""
        return self.outputs[0] if self.outputs else None


def reads(*names: str) -> Callable[[Config], tuple[str, ...]]:
    """A fixed list of upstream stages."""
    return lambda cfg: names
