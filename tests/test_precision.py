"""Precision ("auto" chosen by the hardware, 16-bit autocast) and token-budget batches.

Tolerances (measured with the packaged MiniLM on the bundled sample, stated here so a regression shows): bf16 and
fp16 autocast keep every vector at cosine >= 0.999 to fp32 (0.9999 seen); token-budget batches give the fixed
batches' vectors within 1e-5 per component (only padding and matrix shapes differ).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import negmine
from negmine import encode as encode_mod
from negmine import precision
from negmine.cli import app
from conftest import SAMPLE, sample_texts

N_DOCS = 48  # enough texts of varied length for several batches, few enough to encode fast


def _sample_texts(n: int = N_DOCS) -> list[str]:
    return sample_texts(n)


def _params(**over) -> dict:
    p = {"device": "cpu", "backend": "torch", "precision": "fp32", "max_seq_length": 0, "normalize": True,
         "batch_size": 16, "batch_tokens": 0}
    return {**p, **over}


@pytest.fixture(scope="module")
def minilm():
    path = encode_mod.resolve_model("")
    return encode_mod.load_model(_params(), path)


@pytest.mark.parametrize("flags,expected", [({"avx512f", "avx512_bf16"}, "bf16"), ({"amx_tile", "amx_bf16"}, "bf16"),
                                            ({"avx512f", "avx512_vnni", "avx2"}, "fp32"), (set(), "fp32")])
def test_auto_precision_on_cpu_follows_the_bf16_flags(flags, expected):
    assert precision.resolve("auto", "cpu", flags=flags) == expected
    # no GPU visible: "" means the CPU
    assert precision.resolve("auto", "", flags=flags, capability=None) == expected


def test_auto_precision_on_cuda_follows_the_compute_capability():
    assert precision.resolve("auto", "", capability=(9, 0), flags=set()) == "bf16"
    assert precision.resolve("auto", "cuda:0", capability=(8, 0)) == "bf16"
    assert precision.resolve("auto", "cuda", capability=(7, 5)) == "fp16"
    # a GPU is there but the device asked for is the CPU: the CPU's flags decide
    assert precision.resolve("auto", "cpu", capability=(9, 0), flags=set()) == "fp32"


def test_auto_precision_is_fp32_off_torch_and_on_other_devices():
    assert precision.resolve("auto", "cpu", backend="onnx", flags={"avx512_bf16"}) == "fp32"  # int8 only if asked
    assert precision.resolve("auto", "mps", flags={"avx512_bf16"}) == "fp32"


def test_auto_precision_on_openvino_follows_the_bf16_flags():
    assert precision.resolve("auto", "cpu", backend="openvino", flags={"avx512f", "avx512_bf16"}) == "bf16"
    assert precision.resolve("auto", "", backend="openvino", flags={"amx_bf16"}) == "bf16"
    assert precision.resolve("auto", "cpu", backend="openvino", flags={"avx512f", "avx512_vnni"}) == "fp32"


def test_an_explicit_precision_is_kept_whatever_the_hardware():
    for p in ("fp32", "bf16", "fp16"):
        assert precision.resolve(p, "cpu", flags=set(), capability=None) == p


def test_reading_the_cpu_flags_needs_no_torch():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    if Path("/proc/cpuinfo").is_file():
        assert flags, "a Linux CPU lists its flags in /proc/cpuinfo"


@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_a_16_bit_precision_encodes_the_sample_within_tolerance_of_fp32(minilm, prec):
    texts = _sample_texts()
    ref = encode_mod.encode_texts(minilm, texts, _params(), "")
    got = encode_mod.encode_texts(minilm, texts, _params(precision=prec), "")
    assert got.dtype == np.float32 and got.shape == ref.shape
    cos = np.einsum("ij,ij->i", got, ref)
    assert cos.min() >= 0.999, cos.min()
    assert not np.array_equal(got, ref)  # it did run in 16 bits
    # the weights stay fp32: a 16-bit run leaves the model as it found it
    assert next(minilm.parameters()).dtype.is_floating_point and str(next(minilm.parameters()).dtype) == "torch.float32"


def test_token_budget_batches_give_the_fixed_batches_vectors(minilm):
    texts = _sample_texts() + ["short query", "another one"]
    fixed = encode_mod.encode_texts(minilm, texts, _params(), "")
    budget = encode_mod.encode_texts(minilm, texts, _params(batch_tokens=1024), "")
    np.testing.assert_allclose(budget, fixed, atol=1e-5)


def test_token_budget_batches_work_for_a_static_embedding_model(tmp_path):
    """sentence-transformers' StaticEmbedding (model2vec-style) holds a bare `tokenizers.Tokenizer`, which cannot
    be called like a Hugging Face tokenizer: the default token budget must still batch it, with the fixed
    batches' vectors."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(encode_mod.resolve_model("")))
    weights = np.random.default_rng(0).standard_normal((tok.vocab_size, 16)).astype(np.float32)
    SentenceTransformer(modules=[StaticEmbedding(tok.backend_tokenizer, embedding_weights=weights)]).save(
        str(tmp_path / "static"))
    model = encode_mod.load_model(_params(), tmp_path / "static")
    texts = _sample_texts() + ["short query", "another one"]
    lengths = encode_mod.token_lengths(model, texts)
    assert lengths.tolist() == [len(e.ids) for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    fixed = encode_mod.encode_texts(model, texts, _params(), "")
    budget = encode_mod.encode_texts(model, texts, _params(batch_tokens=1024), "")
    np.testing.assert_allclose(budget, fixed, atol=1e-5)


def test_token_batches_respect_the_budget_and_cover_every_text_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 257, size=500)
    batches = encode_mod.token_batches(lengths, 2048)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 2048
    # short texts travel in larger batches than long ones
    assert len(batches[-1]) > len(batches[0])
    # a text longer than the budget still gets a batch of its own
    assert [len(b) for b in encode_mod.token_batches(np.array([300] + [10] * 12), 100)] == [1, 10, 2]


def _dense_over(tmp_path: Path, *extra: str) -> list[str]:
    return [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'cache'}'", f"export.dir='{tmp_path / 'out'}'",
            "retrieve.retrievers=['dense']", "retrieve.top_k=10", "export.formats=['ids']",
            "export.file_types=['parquet']", *extra]


def test_auto_is_keyed_as_resolved_so_the_cache_never_mixes_precisions(tmp_path, tiny_bi_encoders, monkeypatch):
    from conftest import write_beir

    data = write_beir(tmp_path / "data", [{"_id": f"d{i}", "title": "", "text": f"text number {i} about wings"}
                                          for i in range(12)],
                      [{"_id": "q1", "text": "wings"}], [("q1", "d3", 1)])
    over = _dense_over(tmp_path, f"input.path='{data}'", f"dense.model='{tiny_bi_encoders[0]}'", "dense.device='cpu'",
                       "dense.backend='torch'")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f"}))
    plain = negmine.mine(None, over)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    bf16 = negmine.mine(None, over)
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["config"]["dense"]["precision"] == "auto" and prov["resolved"] == {"dense.precision": "bf16"}
    explicit = negmine.mine(None, over + ["dense.precision='bf16'"])
    assert plain.stages["encode"].stats["precision"] == "fp32"
    assert bf16.stages["encode"].status == "computed"  # not the fp32 vectors under another name
    assert bf16.stages["encode"].key != plain.stages["encode"].key
    assert explicit.stages["encode"].key == bf16.stages["encode"].key  # auto on this CPU is bf16
    assert explicit.stages["encode"].status == "cached"
    fp32 = negmine.mine(None, over + ["dense.precision='fp32'"])
    assert fp32.stages["encode"].key == plain.stages["encode"].key


def test_batch_tokens_is_not_keyed(tmp_path, tiny_bi_encoders):
    over = _dense_over(tmp_path, f"dense.model='{tiny_bi_encoders[0]}'", "dense.precision='fp32'")
    a = negmine.mine(None, over, until="index")
    b = negmine.mine(None, over + ["dense.batch_tokens=0"], until="index")
    assert b.stages["encode"].key == a.stages["encode"].key and b.stages["encode"].status == "cached"


def test_cross_encoder_teacher_in_bf16_scores_within_tolerance_of_fp32_without_ties(tiny_cross_encoder):
    from negmine.score import Teacher

    base = {"kind": "cross-encoder", "activation": "logit", "normalize": True, "max_length": 0, "query_prompt": "",
            "doc_prompt": "", "batch_size": 8, "device": "cpu"}
    texts = _sample_texts(24)
    queries = [t[:40] for t in texts[::-1]]
    ref = Teacher({**base, "precision": "fp32"}, tiny_cross_encoder)(queries, texts)
    got = Teacher({**base, "precision": "bf16"}, tiny_cross_encoder)(queries, texts)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=0.05 * max(1.0, float(np.abs(ref).max())))
    # the score head runs in fp32: scores are not rounded to bf16's 8-bit mantissa (which ties nearby scores)
    import torch

    on_bf16_grid = torch.from_numpy(got).bfloat16().float().numpy() == got
    assert on_bf16_grid.sum() < len(got) // 2


@pytest.mark.parametrize("setting,fragment", [("dense.batch_tokens=-1", "batch_tokens"),
                                              ("dense.batch_tokens=1.5", "batch_tokens"),
                                              ("dense.precision='fp8'", "precision"),
                                              ("score.precision='half'", "precision"),
                                              ("dense.backend='onnx' --set dense.precision='bf16'", "backend torch")])
def test_bad_precision_or_token_budget_is_one_line_and_exit_2(tmp_path, setting, fragment):
    sets = [a for s in setting.split(" --set ") for a in ("--set", s)]
    res = CliRunner().invoke(app, ["run", "-i", str(SAMPLE), "--set", "retrieve.retrievers=['dense']", *sets,
                                   "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
def test_tokenizing_once_gives_the_per_batch_encode_vectors_bit_for_bit(minilm, prec, monkeypatch):
    """The one-tokenizer-call path must not move a single bit against calling `encode` per batch (what the golden
    hashes were recorded with), at fp32 and under bf16 autocast, with and without a prompt."""
    texts = _sample_texts(24) + ["short query", "", "another one"]
    params = _params(precision=prec, batch_tokens=1024)
    once = {p: encode_mod.encode_texts(minilm, texts, params, p) for p in ("", "query: ")}
    monkeypatch.setattr(encode_mod, "tokenize_for_forward", lambda *a: None)
    for p, got in once.items():
        assert np.array_equal(got, encode_mod.encode_texts(minilm, texts, params, p))


def test_a_tokenized_batch_is_what_the_models_preprocess_pads(minilm):
    texts = _sample_texts(12) + ["x"]
    tok = encode_mod.tokenize_for_forward(minilm, texts, "query: ")
    assert tok is not None
    rows = np.array([3, 12, 0, 7])
    ref = minilm.preprocess([texts[i] for i in rows], prompt="query: ")
    got = tok.batch(rows)
    assert set(got) == {k for k, v in ref.items() if hasattr(v, "shape")}
    for k, v in got.items():
        assert np.array_equal(v, ref[k].numpy()), k
    assert tok.extra == {k: v for k, v in ref.items() if not hasattr(v, "shape")}


def test_backend_auto_runs_openvino_on_a_cpu_and_torch_where_openvino_cannot(tmp_path, monkeypatch):
    import importlib.util

    from negmine import backends
    from negmine.encode import resolve_model

    pytest.importorskip("openvino")
    model = resolve_model("")
    monkeypatch.setattr(precision, "cuda_capability", lambda index=0: None)
    assert backends.auto_backend("auto", "", [], model) == "openvino"
    assert backends.auto_backend("bf16", "cpu", [], model) == "openvino"
    assert backends.auto_backend("int8", "", [], model) == "onnx"  # onnxruntime's quantized graph
    assert backends.auto_backend("fp16", "", [], model) == "torch"  # autocast only
    assert backends.auto_backend("auto", "cuda:0", [], model) == "torch"
    assert backends.auto_backend("auto", "", ["cuda:0", "cuda:1"], model) == "torch"
    assert backends.auto_backend("auto", "", ["cpu", "cpu"], model) == "openvino"  # devices change only the speed
    # from the settings and the model alone; tests/test_ray.py checks that Ray writes what local does
    settings = {"backend": "auto", "precision": "auto", "device": "", "devices": [], "model_path": str(model)}
    assert encode_mod.resolved_backend(settings) == "openvino"
    monkeypatch.setattr(precision, "cuda_capability", lambda index=0: (8, 0))
    assert backends.auto_backend("auto", "", [], model) == "torch"  # "" means the GPU that is there
    monkeypatch.setattr(precision, "cuda_capability", lambda index=0: None)
    # a model whose modules the numpy pooling does not mirror (a Dense layer after pooling)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    assert backends.auto_backend("auto", "", [], odd) == "torch"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert backends.auto_backend("auto", "", [], model) == "torch"


def test_backend_auto_is_keyed_as_resolved(tmp_path, tiny_bi_encoders, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setattr(precision, "cuda_capability", lambda index=0: None)
    over = _dense_over(tmp_path, f"dense.model='{tiny_bi_encoders[0]}'", "dense.precision='fp32'")
    auto = negmine.mine(None, over, until="index")
    assert auto.stages["encode"].stats["backend"] == "openvino"
    explicit = negmine.mine(None, over + ["dense.backend='openvino'"], until="index")
    assert explicit.stages["encode"].key == auto.stages["encode"].key and explicit.stages["encode"].status == "cached"
    torch_run = negmine.mine(None, over + ["dense.backend='torch'"], until="index")
    assert torch_run.stages["encode"].key != auto.stages["encode"].key  # never the other runtime's vectors
    assert torch_run.stages["encode"].stats["backend"] == "torch"
    full = negmine.mine(None, over)
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["config"]["dense"]["backend"] == "auto"
    assert prov["resolved"] == {"dense.precision": "fp32", "dense.backend": "openvino"}
    assert full.stages["encode"].status == "cached"


def test_batch_tokens_auto_is_each_runtimes_own_budget(tmp_path):
    from negmine.config import load_config

    assert encode_mod.batch_tokens({"batch_tokens": "auto"}, "torch") == 8192
    assert encode_mod.batch_tokens({"batch_tokens": "auto"}, "openvino") == 2048
    assert encode_mod.batch_tokens({"batch_tokens": 4096}, "openvino") == 4096  # a number is taken as given
    assert load_config(None, [f"input.path='{SAMPLE}'"])["dense"]["batch_tokens"] == "auto"
    assert load_config(None, [f"input.path='{SAMPLE}'", "dense.batch_tokens=0"])["dense"]["batch_tokens"] == 0
    res = CliRunner().invoke(app, ["run", "-i", str(SAMPLE), "--set", "dense.batch_tokens='fast'",
                                   "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 2 and "batch_tokens" in res.output and len(res.output.strip().splitlines()) == 1
