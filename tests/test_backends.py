"""Runtimes without torch: `[dense] backend = "onnx" | "openvino"` (negmine.backends).

Tolerances against torch fp32, measured with the packaged MiniLM on the bundled sample and stated so a regression
shows: onnxruntime fp32 and OpenVINO fp32 give the same vectors to rounding (cosine >= 0.9999; 1.000000 seen on
300 SciFact abstracts), OpenVINO bf16 >= 0.999 (0.99996 seen), onnxruntime int8 (per-channel dynamic
quantization) >= 0.97 (on the sample 0.993-0.996, and 0.976 for the empty text, which is [CLS] [SEP] alone;
0.989 at the minimum over 100 SciFact abstracts, 0.995 on average).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import negmine
from negmine import backends
from negmine import encode as encode_mod
from negmine.cli import app
from conftest import SAMPLE, sample_texts, write_beir

ROOT = Path(__file__).resolve().parents[1]
MIN_COSINE = {("onnx", "fp32"): 0.9999, ("openvino", "fp32"): 0.9999, ("openvino", "bf16"): 0.999,
              ("onnx", "int8"): 0.97}


def _texts(n: int = 24) -> list[str]:
    return sample_texts(n) + ["short query", ""]


def _params(**over) -> dict:
    return {"device": "cpu", "backend": "torch", "precision": "fp32", "max_seq_length": 0, "normalize": True,
            "batch_size": 16, "batch_tokens": 2048, **over}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """One cache root for the module, so the MiniLM export is made once and shared by the tests."""
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def minilm_fp32():
    path = encode_mod.resolve_model("")
    model = encode_mod.load_model(_params(), path)
    texts = _texts()
    return path, texts, {p: encode_mod.encode_texts(model, texts, _params(), p) for p in ("", "query: ")}


@pytest.mark.parametrize("backend,prec", sorted(MIN_COSINE))
def test_each_runtime_loads_and_encodes_the_sample_within_tolerance_of_torch_fp32(minilm_fp32, exports, backend,
                                                                                   prec):
    path, texts, ref = minilm_fp32
    model = encode_mod.load_model(_params(backend=backend, precision=prec), path, exports)
    assert isinstance(model, backends.RuntimeEncoder)
    for prompt, want in ref.items():
        got = encode_mod.encode_texts(model, texts, _params(backend=backend, precision=prec), prompt)
        assert got.dtype == np.float32 and got.shape == want.shape
        cos = np.einsum("ij,ij->i", got, want)
        assert cos.min() >= MIN_COSINE[backend, prec], (prompt, cos.min())
    # fixed batches of batch_size (batch_tokens = 0) too
    fixed = encode_mod.encode_texts(model, texts, _params(backend=backend, precision=prec, batch_tokens=0), "")
    assert np.einsum("ij,ij->i", fixed, ref[""]).min() >= MIN_COSINE[backend, prec]


def test_the_runtime_tokenizer_gives_the_models_own_ids(minilm_fp32, exports):
    path, texts, _ = minilm_fp32
    torch_model = encode_mod.load_model(_params(), path)
    model = encode_mod.load_model(_params(backend="onnx"), path, exports)
    texts = texts + [" ".join(texts)]  # longer than max_seq_length: truncated the same way
    for prompt in ("", "query: "):
        ids, _, prompt_len = model.tokenize(texts, prompt)
        ref = torch_model.preprocess(texts, prompt=prompt or None,
                                     processing_kwargs={"common": {"return_tensors": None}, "text": {"padding": False}})
        assert [x.tolist() for x in ids] == ref["input_ids"]
        assert prompt_len == ref.get("prompt_length", 0)
    # in chunks of the tokenizer calls: the same ids across a chunk boundary
    many = (texts * (backends.TOKENIZE_CHUNK // len(texts) + 2))[:backends.TOKENIZE_CHUNK + 3]
    ids, _, _ = model.tokenize(many, "")
    whole = model.tokenizer.encode_batch(many, add_special_tokens=True)
    assert [x.tolist() for x in ids] == [e.ids for e in whole]


def test_encoding_with_a_runtime_imports_no_torch(minilm_fp32, exports):
    path, texts, _ = minilm_fp32
    encode_mod.load_model(_params(backend="onnx"), path, exports)  # exported here: the child only loads it
    code = ("import sys, json; from pathlib import Path; from negmine import encode; "
            "p = json.loads(sys.argv[1]); m = encode.load_model(p, Path(sys.argv[2]), Path(sys.argv[3])); "
            "v = encode.encode_texts(m, ['a wing stalls', 'heat flux'], p, ''); "
            "print(v.shape, 'torch' in sys.modules, 'transformers' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, json.dumps(_params(backend="onnx")), str(path), str(exports)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["(2,", "384)", "False", "False"]


def test_a_damaged_export_is_exported_again(tiny_bi_encoders, tmp_path):
    params = _params(backend="onnx", model="tiny-fingerprint")
    model = encode_mod.load_model(params, tiny_bi_encoders[0], tmp_path)
    ref = encode_mod.encode_texts(model, _texts(6), params, "")
    graph = next((tmp_path / "models").glob("*/model.onnx"))
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    again = encode_mod.load_model(params, tiny_bi_encoders[0], tmp_path)
    np.testing.assert_array_equal(encode_mod.encode_texts(again, _texts(6), params, ""), ref)
    from negmine.cache import check_entry

    assert check_entry(graph.parent) is None


def _over(tmp_path: Path, model: Path, *extra: str) -> list[str]:
    docs = [{"_id": f"d{i}", "title": "", "text": f"text number {i} about wings and {'heat ' * (i % 5)}"}
            for i in range(16)]
    data = write_beir(tmp_path / "data", docs, [{"_id": "q1", "text": "wings"}, {"_id": "q2", "text": "heat"}],
                      [("q1", "d3", 1), ("q2", "d4", 1)])
    return [f"input.path='{data}'", f"run.cache_dir='{tmp_path / 'cache'}'", f"export.dir='{tmp_path / 'out'}'",
            "retrieve.retrievers=['dense']", "retrieve.top_k=8", "sample.num_negatives=3", "export.formats=['ids']",
            f"dense.model='{model}'", *extra]


def test_each_backend_mines_end_to_end_and_the_cache_never_mixes_their_vectors(tmp_path, tiny_bi_encoders):
    runs = {}
    for backend, prec in [("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32")]:
        r = negmine.mine(None, _over(tmp_path, tiny_bi_encoders[0], f"dense.backend='{backend}'",
                                     f"dense.precision='{prec}'"))
        assert r.stages["encode"].status == "computed", (backend, prec)  # never another backend's vectors
        assert r.stages["encode"].stats["backend"] == backend and r.stages["encode"].stats["precision"] == prec
        assert r.outputs and all(Path(p).is_file() for p in r.outputs)
        runs[backend, prec] = r
    assert len({r.stages["encode"].key for r in runs.values()}) == len(runs)
    again = negmine.mine(None, _over(tmp_path, tiny_bi_encoders[0], "dense.backend='onnx'", "dense.precision='fp32'"))
    assert again.stages["encode"].status == "cached" and again.stages["encode"].key == runs["onnx", "fp32"].stages[
        "encode"].key
    # the vectors of a runtime are the torch ones to rounding
    t = np.load(runs["torch", "fp32"].stages["encode"].path / "docs-00000.npy")
    o = np.load(runs["onnx", "fp32"].stages["encode"].path / "docs-00000.npy")
    np.testing.assert_allclose(o, t, atol=1e-5)


def test_a_dense_run_on_a_runtime_backend_never_imports_torch(tmp_path, tiny_bi_encoders):
    over = _over(tmp_path, tiny_bi_encoders[0], "dense.backend='onnx'")
    code = ("import sys, negmine; r = negmine.mine(None, sys.argv[1:]); "
            "print(r.stages['encode'].status, 'torch' in sys.modules, 'sentence_transformers' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, *over], capture_output=True, text=True,
                         env={**os.environ, "NEGMINE_PROGRESS": "0", "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["computed", "False", "False"]


@pytest.mark.parametrize("sets,fragment", [
    (["dense.backend='tensorrt'"], "backend"),
    (["dense.backend='torch'", "dense.precision='int8'"], "backend = \"onnx\""),
    (["dense.backend='onnx'", "dense.precision='bf16'"], "does not run on backend onnx"),
    (["dense.backend='openvino'", "dense.precision='int8'"], "does not run on backend openvino"),
    (["dense.backend='onnx'", "dense.device='cuda'"], "runs on the CPU"),
    (["dense.backend='onnx'", "dense.precision='NaN'"], "precision"),
    (["dense.backend=''"], "backend"),
])
def test_a_bad_backend_setting_is_one_line_and_exit_2(tmp_path, sets, fragment):
    args = [a for s in sets for a in ("--set", s)]
    res = CliRunner().invoke(app, ["run", "-i", str(SAMPLE), "--set", "retrieve.retrievers=['dense']", *args,
                                   "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("backend,package", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_a_missing_runtime_package_is_one_line_and_exit_2(tmp_path, monkeypatch, backend, package):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    res = CliRunner().invoke(app, ["run", "-i", str(SAMPLE), "--set", "retrieve.retrievers=['dense']",
                                   "--set", f"dense.backend='{backend}'",
                                   "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 2, res.output
    assert f"needs {package}" in res.output and f"negmine[{backend}]" in res.output
    assert not (tmp_path / "out").exists()
