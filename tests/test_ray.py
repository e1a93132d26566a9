"""The Ray engine: [run] engine = "ray" runs encode, search and teacher scoring on Ray actors and writes the same
outputs under the same cache keys as the local engine. One local 2-CPU cluster is shared by the module."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from negmine import engine
from negmine.config import load_config
from negmine.errors import ConfigError
from negmine.pipeline import mine

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


RUN_ONLY = ("report.", "run.json")  # the run's timings, memory and cache folder: not the mined data


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every exported data file's bytes (provenance included)."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
             if p.is_file() and not p.name.startswith(RUN_ONLY)}
    assert any(name.endswith(".parquet") for name in files)
    return files


@pytest.mark.parametrize("override, problem", [
    ("run.engine='spark'", "choose one of local, ray"),
    ("dense.workers=0", "[dense] workers is 0"),
    ("score.workers=5000", "[score] workers is 5000"),
    ("dense.workers=1.5", "must be an integer"),
])
def test_engine_settings_refuse_bad_values(override: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_missing_ray_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Ray hidden from the interpreter: the run stops before any work, with one line naming the extra."""
    code = ("import sys; sys.modules['ray'] = None; from negmine.cli import main; "
            "sys.argv = ['negmine'] + sys.argv[1:]; main()")
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, "run", str(CONFIGS / "sample-bm25.toml"), "--engine", "ray",
                           "-o", str(out), "--cache-dir", str(cache), "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'negmine[ray]'" in lines[0], proc.stderr
    assert not out.exists()
    assert not any(cache.glob("*/*")) if cache.exists() else True  # no stage entry was written


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests folder
    yield ray
    ray.shutdown()


def _cases(tiny_bi_encoders: list[Path], tiny_cross_encoder: Path) -> dict[str, tuple[str, list[str]]]:
    small = ["retrieve.chunk_size=16", "dense.shard_size=128", "dense.workers=2"]  # several chunks and shards
    tiny = [f"dense.model='{tiny_bi_encoders[0]}'"]
    return {
        "bm25": ("sample-bm25.toml", small),
        "dense": ("dense.toml", small + tiny),
        "hybrid": ("hybrid.toml", small + tiny),
        "teacher": ("cross-encoder.toml", small + tiny + [f"score.teacher='{tiny_cross_encoder}'",
                                                          "score.flush_pairs=700", "score.workers=2"]),
    }


def test_ray_engine_maps_items_in_worker_processes_in_order(cluster, tmp_path: Path) -> None:
    """Items go through Ray actors (other processes, `workers` of them) and come back in the items' order."""
    from negmine.engine.ray import RayEngine

    eng = RayEngine("", tmp_path)
    out = list(eng.map(_PidWorker, range(9), workers=2))
    assert [i for i, _ in out] == list(range(9))
    pids = {pid for _, pid in out}
    assert os.getpid() not in pids and len(pids) == 2
    assert not eng.started  # the cluster was the caller's: closing leaves it running
    eng.close()
    assert cluster.is_initialized()


def test_ray_engine_raises_a_workers_config_error_as_itself(cluster, tmp_path: Path) -> None:
    """A user-fixable error in a worker (a model that does not load) is one line on the driver, not a Ray trace."""
    from negmine.engine.ray import RayEngine

    with pytest.raises(ConfigError, match="bad model"):
        list(RayEngine("", tmp_path).map(_Failing, range(3), workers=1))


class _PidWorker:
    def __call__(self, item: int) -> tuple[int, int]:
        return item, os.getpid()


class _Failing:
    def __init__(self) -> None:
        raise ConfigError("[dense] cannot load model: bad model")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bm25", "dense", "hybrid", "teacher"])
def test_ray_engine_writes_the_local_engines_outputs_and_cache_keys(
        case: str, cluster, tmp_path: Path, tiny_bi_encoders: list[Path], tiny_cross_encoder: Path) -> None:
    """Byte-identical export files (data and provenance), the same stage keys, and the engine in no key: a Ray
    run over a cache the local engine filled computes nothing."""
    config, sets = _cases(tiny_bi_encoders, tiny_cross_encoder)[case]
    runs, engines = {}, []
    for name in ("local", "ray"):
        cfg = load_config(CONFIGS / config, sets + [f"run.engine='{name}'", f"export.dir='{tmp_path / name}'",
                                                    f"run.cache_dir='{tmp_path / ('cache-' + name)}'"])
        runs[name] = mine(cfg, on_stage=lambda r: engines.append(engine.current().name))
    assert set(engines[:len(runs["local"].stages)]) == {"local"}
    assert set(engines[len(runs["local"].stages):]) == {"ray"}
    local, ray_run = runs["local"], runs["ray"]
    assert {s: r.key for s, r in ray_run.stages.items()} == {s: r.key for s, r in local.stages.items()}
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")
    again = mine(load_config(CONFIGS / config, sets + ["run.engine='ray'", f"export.dir='{tmp_path / 'again'}'",
                                                       f"run.cache_dir='{tmp_path / 'cache-local'}'"]))
    assert again.computed == []
    assert _outputs(tmp_path / "again") == _outputs(tmp_path / "local")
