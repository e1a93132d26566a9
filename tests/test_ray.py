"""The Ray engine: [run] engine = "ray" runs encode, search and teacher scoring on Ray actors and writes the same
outputs under the same cache keys as the local engine. One local 2-CPU cluster is shared by the module."""
from __future__ import annotations

import os
import signal
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


def test_engine_options_set_the_run_section() -> None:
    """--engine and --ray-address are the [run] settings, for `negmine run` and every per-stage command."""
    from negmine.cli.common import overrides

    cfg = load_config(None, overrides(None, engine="ray", ray_address="auto"))
    assert (cfg["run"]["engine"], cfg["run"]["ray_address"]) == ("ray", "auto")
    assert load_config(None, [])["run"]["engine"] == "local"


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

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
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
    out = list(eng.map(_PidWorker, range(9), workers=5))  # capped at the cluster's 2 CPUs, not left waiting
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


def test_ray_engine_refuses_a_relative_cache_on_a_cluster_of_several_nodes(cluster, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """Joining a cluster whose nodes each resolve a relative path in their own folder: refused before any work;
    an absolute path on shared storage is accepted."""
    from negmine.engine.ray import RayEngine

    nodes = [{"Alive": True, "NodeID": "a"}, {"Alive": True, "NodeID": "b"}, {"Alive": False, "NodeID": "c"}]
    monkeypatch.setattr(cluster, "nodes", lambda: nodes)
    with pytest.raises(ConfigError, match="relative, but the Ray cluster has 2 nodes"):
        RayEngine("auto", Path(".negmine/cache"))
    RayEngine("auto", tmp_path / "cache").close()
    nodes[1]["Alive"] = False
    RayEngine("auto", Path(".negmine/cache")).close()  # one node alive: its folder is the driver's


class _KillingEncoder:
    """The encoder of the run, but its process dies by SIGKILL on the third shard, once (a marker file)."""

    MARKER = ""

    def __init__(self, *args) -> None:
        from negmine.encode import ShardEncoder

        self.inner = ShardEncoder(*args)

    def __call__(self, item):
        if item[0] == "docs-00002.npy" and not Path(self.MARKER).exists():
            Path(self.MARKER).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(item)


@pytest.mark.slow
def test_ray_worker_killed_mid_encode_ends_in_the_uninterrupted_outputs(
        cluster, tmp_path: Path, tiny_bi_encoders: list[Path], monkeypatch) -> None:
    """A SIGKILLed encoder actor is restarted and its shard encoded again: the run completes with the same
    embeddings and exports as an uninterrupted local run."""
    import negmine.encode

    sets = ["retrieve.chunk_size=16", "dense.shard_size=128", "dense.workers=2",
            f"dense.model='{tiny_bi_encoders[0]}'"]
    local = mine(load_config(CONFIGS / "dense.toml", sets + [f"export.dir='{tmp_path / 'local'}'",
                                                             f"run.cache_dir='{tmp_path / 'cache-local'}'"]))
    monkeypatch.setattr(_KillingEncoder, "MARKER", str(tmp_path / "killed"))
    monkeypatch.setattr(negmine.encode, "ShardEncoder", _KillingEncoder)
    ray_run = mine(load_config(CONFIGS / "dense.toml", sets + ["run.engine='ray'", f"export.dir='{tmp_path / 'ray'}'",
                                                               f"run.cache_dir='{tmp_path / 'cache-ray'}'"]))
    assert (tmp_path / "killed").exists()  # the worker did die mid-encode
    assert ray_run.stages["encode"].key == local.stages["encode"].key
    shards = sorted(p.name for p in local.stages["encode"].path.glob("docs-*.npy"))
    assert len(shards) == 4
    for name in shards:
        assert (ray_run.stages["encode"].path / name).read_bytes() == \
            (local.stages["encode"].path / name).read_bytes()
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")


_KILL_DRIVER = """
import os, sys
from pathlib import Path
from negmine import tables
from negmine.config import load_config
from negmine.pipeline import mine

docs, cache = tables.Texts.docs, Path(sys.argv[1])


def docs_then_die(self, rows):  # the driver dies (SIGKILL) once a worker has written a shard
    if any(cache.rglob(".partial-*/docs-*.npy")):
        os.kill(os.getpid(), 9)
    return docs(self, rows)


tables.Texts.docs = docs_then_die
mine(load_config(sys.argv[2], sys.argv[3:]))
"""


@pytest.mark.slow
def test_ray_driver_killed_mid_encode_resumes_to_the_uninterrupted_outputs(
        cluster, tmp_path: Path, tiny_bi_encoders: list[Path]) -> None:
    """A driver SIGKILLed mid-encode leaves its finished shards in the partial entry; a rerun on Ray encodes only
    the rest and ends in the exports of an uninterrupted local run."""
    sets = ["dense.shard_size=64", "dense.workers=2", f"dense.model='{tiny_bi_encoders[0]}'"]
    cache = tmp_path / "cache-ray"
    ray_sets = sets + ["run.engine='ray'", f"run.ray_address='{cluster.get_runtime_context().gcs_address}'",
                       f"run.cache_dir='{cache}'", f"export.dir='{tmp_path / 'ray'}'"]
    proc = subprocess.run([sys.executable, "-c", _KILL_DRIVER, str(cache), str(CONFIGS / "dense.toml"), *ray_sets],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (tmp_path / "ray").exists()
    rerun = mine(load_config(CONFIGS / "dense.toml", ray_sets))
    encoded = rerun.stages["encode"].stats
    assert 0 < encoded["encoded_shards_this_run"] < encoded["shards"] == 8  # resumed, not restarted
    local = mine(load_config(CONFIGS / "dense.toml", sets + [f"export.dir='{tmp_path / 'local'}'",
                                                             f"run.cache_dir='{tmp_path / 'cache-local'}'"]))
    assert rerun.stages["encode"].key == local.stages["encode"].key
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")


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
