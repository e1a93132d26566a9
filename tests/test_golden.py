"""Mining results stay what they were: every preset's data files hash as recorded in tests/golden/hashes.json.

A change that moves them on purpose (a new default, a fixed bug) re-records them with `python tests/golden.py`
and says why in its commit message.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from golden import GOLDEN, SCIFACT, case_key, cases, mine_case

EXPECTED = json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("golden")  # one cache: the dense presets share one encode


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "auto"])
@pytest.mark.parametrize("name,config,data", cases(), ids=[c[0] for c in cases()])
def test_presets_mine_the_recorded_data(name, config, data, precision, work, tiny_cross_encoder):
    if data == SCIFACT and not SCIFACT.is_dir():
        pytest.skip("../shared/data/scifact is not here")
    key = case_key(name, config, data, work, tiny_cross_encoder, precision)
    if precision == "auto" and key == case_key(name, config, data, work, tiny_cross_encoder, "fp32"):
        pytest.skip(f"{name}: auto is fp32 here (or it runs no model): checked by the fp32 case")
    if key not in EXPECTED:
        pytest.skip(f"{key}: no hashes recorded for the precision auto resolves to on this machine")
    assert mine_case(name, config, data, work, tiny_cross_encoder, precision) == EXPECTED[key]
