"""Several devices without Ray: `[dense] devices` encodes the shards in one process a device, same outputs."""
from __future__ import annotations

from pathlib import Path

import pytest

from negmine.config import load_config
from negmine.errors import ConfigError
from negmine.pipeline import mine

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("devices", ["['gpu0']", "['cuda:x']", "['']", "['cpu', 'tpu']"])
def test_devices_refuses_names_that_are_not_devices(devices: str) -> None:
    with pytest.raises(ConfigError, match=r"\[dense\] devices has"):
        load_config(None, [f"dense.devices={devices}"])


@pytest.mark.slow
def test_two_cpu_processes_encode_the_same_shards_and_exports_as_one(tmp_path: Path,
                                                                     tiny_bi_encoders: list[Path]) -> None:
    """Shards dealt to two processes come back byte-identical to one process's, under the same key (devices is
    speed-only), and the exports are the same."""
    sets = ["dense.shard_size=128", f"dense.model='{tiny_bi_encoders[0]}'"]
    runs = {}
    for name, devices in (("one", "[]"), ("two", "['cpu', 'cpu']")):
        runs[name] = mine(load_config(ROOT / "configs" / "dense.toml",
                                      sets + [f"dense.devices={devices}", f"export.dir='{tmp_path / name}'",
                                              f"run.cache_dir='{tmp_path / ('cache-' + name)}'"]))
    one, two = runs["one"].stages["encode"], runs["two"].stages["encode"]
    assert two.key == one.key and two.stats["encoded_shards_this_run"] == 4
    for shard in sorted(one.path.glob("*.npy")):
        assert (two.path / shard.name).read_bytes() == shard.read_bytes(), shard.name
    files = {p.name: p.read_bytes() for p in (tmp_path / "one").glob("*.parquet")}
    assert files and files == {p.name: p.read_bytes() for p in (tmp_path / "two").glob("*.parquet")}
