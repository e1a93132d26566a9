"""Encoders and cross-encoders that run without torch: the model exported once to ONNX, run by onnxruntime or OpenVINO.

`[dense] backend = "onnx"` or `"openvino"`. The sentence-transformers folder is exported locally (no network):
a BERT, RoBERTa or XLM-R model is built in-process from its config.json and safetensors by `negmine.graph` (no
torch); any other model, or one that builder cannot mirror exactly, by `torch.onnx.export` in a child process. So
the mining process never imports torch: it tokenizes with `tokenizers` (the model's own tokenizer.json), runs the
graph, and pools and normalises in numpy as the model's
sentence-transformers config says (pooling mode, include_prompt, Normalize module, max_seq_length). That is the
memory lever of issue #11: torch, transformers and sentence-transformers are most of a cold run's peak RSS.

`[score] backend = "onnx"` or `"openvino"` runs the teacher the same way: a bi-encoder as above, a cross-encoder
(`RuntimeCrossEncoder`) from an export of its sequence classifier's logits (`head = "logits"`), its (query,
document) pairs tokenized as sentence-transformers' CrossEncoder tokenizes them.

Precisions: `fp32`; for onnxruntime `int8` (its dynamic quantization of the exported graph: int8 weights,
activations quantized per batch); for OpenVINO `bf16` (its CPU plugin's inference precision, on CPUs that multiply
bf16 in hardware). OpenVINO int8 would need nncf's weight compression: OpenVINO runs onnxruntime's quantized graph,
but at less than half its fp32 speed here (107 against 44 CPU seconds), so it is not offered. OpenVINO's CPU plugin may pick bf16 by itself on some CPUs, so the precision is always set explicitly.

Exports live in the cache (`<cache>/models/<key>`, with the same meta.json and checksums as a stage entry, so
`negmine cache verify` and `list` see them), keyed by the model's fingerprint, the format, the head (where it is
not the token embeddings) and the export code's version; they are written atomically under the key's lock, and a
damaged one is exported again.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from negmine.errors import ConfigError

log = logging.getLogger("negmine.backends")
MODELS_DIR = "models"  # beside the stage folders; not "export", the output stage's own folder
EXPORT_VERSION = "2"  # 2: built in-process by negmine.graph where it can
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16")}
# int8: signed weights, one scale per output channel, MatMuls only (the attention's and feed-forward's weights).
# On MiniLM over 100 SciFact abstracts, onnxruntime's defaults (per-tensor, every op) kept cosine to fp32 at only
# 0.90 (min); per-channel MatMul-only 0.992 (min) and was the fastest of the four variants tried.
QUANTIZATION = {"weight_type": "QInt8", "per_channel": True, "op_types_to_quantize": ["MatMul"]}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
HEADS = ("token_embeddings", "logits")  # what an export outputs: an encoder's token embeddings, a classifier's logits


def require(backend: str, section: str = "dense") -> None:
    """One clear line when the runtime of `backend` (of config section `section`) is not installed."""
    module = RUNTIMES[backend]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"[{section}] backend {backend!r} needs {module}, which is not installed: "
                          f"pip install 'negmine[{backend}]', or use backend \"torch\"")


def auto_backend(precision: str, device: str, devices: Sequence[str], model_path: Path,
                 kind: str = "bi-encoder") -> str:
    """What `backend = "auto"` ([dense], [score]) runs: OpenVINO on a CPU, torch where it cannot.

    `kind` is "cross-encoder" for a [score] cross-encoder teacher (OpenVINO scores its pairs at 2.8x torch fp32's
    rate, Spearman 0.9999 to its scores); anything else is an embedding model.

    OpenVINO's CPU plugin encodes MiniLM at 2.76x sentence-transformers' fp32 rate on a CPU with AVX512-BF16, and a
    run without torch peaks lower (bench/README.md). torch stays where OpenVINO cannot run the job: a GPU (the
    configured device, or "" with a CUDA GPU present), GPUs among `devices`, fp16 (autocast only), a model whose modules
    the numpy pooling does not mirror, or OpenVINO not installed. int8 is onnxruntime's quantized graph.
    """
    from negmine.precision import cuda_capability

    if precision == "int8":
        return "onnx"
    if precision == "fp16" or any(d != "cpu" for d in devices) or device not in ("", "cpu"):
        return "torch"
    if device == "" and cuda_capability(0) is not None:
        return "torch"
    if importlib.util.find_spec(RUNTIMES["openvino"]) is None:
        return "torch"
    try:
        if kind == "cross-encoder":
            read_ce_config(model_path)
        else:
            read_st_config(model_path)
    except ConfigError:
        return "torch"  # a model the runtime cannot mirror: torch runs it (and says what is wrong, if anything)
    return "openvino"


def read_st_config(model_path: Path) -> dict[str, Any]:
    """What the numpy pooling needs from a sentence-transformers folder; a model it cannot mirror is refused."""
    try:
        modules = json.loads((model_path / "modules.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{model_path} has no readable modules.json: backends onnx and openvino need a "
                          "sentence-transformers model folder; use backend \"torch\"") from None
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    # the Transformer's own folder: "" in current saves, "0_Transformer" in older ones
    sub = model_path / (modules[0].get("path") or "") if modules else model_path
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in _SUPPORTED_MODULES for k in kinds) \
            or not (sub / "tokenizer.json").is_file():
        raise ConfigError(f"{model_path} has modules {kinds}: backends onnx and openvino run Transformer, Pooling "
                          "and Normalize with a fast tokenizer (tokenizer.json) only; use backend \"torch\"")
    pooling_dir = model_path / next(m["path"] for m in modules if m["type"].endswith("Pooling"))
    pool = json.loads((pooling_dir / "config.json").read_text())
    if "pooling_mode" in pool:  # sentence-transformers >= 6: "pooling_mode": "mean" (or a list of modes)
        given = pool["pooling_mode"] if isinstance(pool["pooling_mode"], list) else [pool["pooling_mode"]]
        modes = [f"{m}_token" if m == "cls" else f"{m}_tokens" for m in given if m in ("cls", "mean", "max")]
        other = [m for m in given if m not in ("cls", "mean", "max")]
    else:  # older: one boolean per mode
        modes = [m for m in ("cls_token", "mean_tokens", "max_tokens") if pool.get(f"pooling_mode_{m}")]
        other = [k for k, v in pool.items() if k.startswith("pooling_mode_") and v and k[13:] not in
                 ("cls_token", "mean_tokens", "max_tokens")]
    if len(modes) != 1 or other:
        raise ConfigError(f"{pooling_dir}/config.json pools by {modes + other}: backends onnx and openvino "
                          "support one of cls, mean or max pooling; use backend \"torch\"")
    st = {}
    if (sub / "sentence_bert_config.json").is_file():
        st = json.loads((sub / "sentence_bert_config.json").read_text())
    tok_cfg = {}
    if (sub / "tokenizer_config.json").is_file():
        tok_cfg = json.loads((sub / "tokenizer_config.json").read_text())
    max_len = st.get("max_seq_length") or tok_cfg.get("model_max_length") or 512
    return {"transformer_dir": sub, "pooling": modes[0].split("_")[0], "include_prompt": pool.get("include_prompt", True),
            "normalize": "Normalize" in kinds, "max_seq_length": int(min(max_len, 1_000_000)),
            "dim": int(pool.get("word_embedding_dimension") or pool.get("embedding_dimension") or 0),
            "pad_token": tok_cfg.get("pad_token") if isinstance(tok_cfg.get("pad_token"), str) else None}


def read_ce_config(model_path: Path) -> dict[str, Any]:
    """What a cross-encoder runtime needs from the model's folder, read as sentence-transformers' CrossEncoder
    reads it: the transformers folder, the tokenizer's truncation side and padding token, and the default
    max length (sentence_bert_config's max_seq_length, else the tokenizer's model_max_length capped at the
    config's max_position_embeddings). A model this cannot mirror is refused with one line."""
    sub, st = model_path, {}
    if (model_path / "modules.json").is_file():  # saved by CrossEncoder.save: one Transformer module
        try:
            modules = json.loads((model_path / "modules.json").read_text())
            kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{model_path}/modules.json is not readable; fix it or use [score] backend "
                              "\"torch\"") from None
        if kinds != ["Transformer"]:
            raise ConfigError(f"{model_path} has modules {kinds}: [score] backends onnx and openvino run a "
                              "cross-encoder that is one Transformer; use backend \"torch\"")
        sub = model_path / (modules[0].get("path") or "")
        if (sub / "sentence_bert_config.json").is_file():
            st = json.loads((sub / "sentence_bert_config.json").read_text())
    if (model_path / "config_sentence_transformers.json").is_file():
        ce = json.loads((model_path / "config_sentence_transformers.json").read_text())
        if ce.get("default_prompt_name"):
            raise ConfigError(f"{model_path} has a default prompt ({ce['default_prompt_name']!r}), which [score] "
                              "backends onnx and openvino do not apply; use backend \"torch\"")
    if not (sub / "tokenizer.json").is_file() or not (sub / "config.json").is_file():
        raise ConfigError(f"{sub} has no tokenizer.json or config.json: [score] backends onnx and openvino need a "
                          "transformers model folder with a fast tokenizer; use backend \"torch\"")
    config = json.loads((sub / "config.json").read_text())
    labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
    if labels != 1:
        raise ConfigError(f"[score] cross-encoder {model_path} has {labels} labels; a relevance teacher has one "
                          "output")
    tok_cfg = {}
    if (sub / "tokenizer_config.json").is_file():
        tok_cfg = json.loads((sub / "tokenizer_config.json").read_text())
    max_len = st.get("max_seq_length")
    if not max_len:
        max_len = tok_cfg.get("model_max_length") or 1_000_000
        positions = config.get("max_position_embeddings", -1)
        if positions not in (None, -1):  # as sentence-transformers caps it (xlnet's -1 means no limit)
            max_len = min(max_len, positions)
    pad = tok_cfg.get("pad_token")
    if isinstance(pad, dict):  # an AddedToken saved whole
        pad = pad.get("content")
    return {"transformer_dir": sub, "max_length": int(min(max_len, 1_000_000)),
            "truncation_side": tok_cfg.get("truncation_side", "right"),
            "pad_token": pad if isinstance(pad, str) else None}


def cross_encoder_dir(model_path: Path) -> Path:
    """The transformers folder of a cross-encoder (the model's own, or its Transformer module's)."""
    return read_ce_config(model_path)["transformer_dir"]


# ---- export (in a child process: torch stays out of the mining process) -------------------------------------

def export_key(fingerprint: str, backend: str, precision: str, head: str = "token_embeddings") -> str:
    from negmine.hashing import hash_obj

    # OpenVINO reads the ONNX graph: both backends share an export; int8 is a second, quantized graph. The head
    # enters only when it is not the encoders' token embeddings, so their keys (and exports) stay what they were.
    return hash_obj({"model": fingerprint, "format": "onnx", "version": EXPORT_VERSION,
                     "int8": QUANTIZATION if precision == "int8" else None,
                     **({"head": head} if head != "token_embeddings" else {})})


def exported_model(model_path: Path, fingerprint: str, backend: str, precision: str, cache_root: Path,
                   head: str = "token_embeddings") -> Path:
    """The exported graph of the model (exported now if missing or damaged), as a file path. `head`:
    "token_embeddings" (a sentence-transformers encoder's Transformer) or "logits" (a cross-encoder's
    AutoModelForSequenceClassification)."""
    from negmine.cache import _lock_path, check_entry, file_lock, file_records
    from negmine.io import atomic_dir

    if head not in HEADS:
        raise ValueError(f"unknown export head {head!r}")
    key = export_key(fingerprint, backend, precision, head)
    stage_dir = cache_root / MODELS_DIR
    entry = stage_dir / key
    name = "model-int8.onnx" if precision == "int8" else "model.onnx"
    if entry.is_dir() and check_entry(entry, hashes=False) is None:
        return entry / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(_lock_path(stage_dir, key)):
        if entry.is_dir():
            damage = check_entry(entry, hashes=True)
            if damage is None:
                return entry / name  # another process exported it while this one waited
            log.warning("exported model %s is damaged (%s); exporting it again", key[:12], damage)
        start = time.perf_counter()
        with atomic_dir(entry) as tmp:
            transformer_dir = cross_encoder_dir(model_path) if head == "logits" else \
                read_st_config(model_path)["transformer_dir"]
            builder = "graph" if _build_graph(transformer_dir, tmp, precision == "int8", head) else "torch"
            if builder == "torch":
                cmd = [sys.executable, "-m", "negmine.backends", str(model_path), str(tmp)]
                if precision == "int8":
                    cmd.append("--int8")
                if head != "token_embeddings":
                    cmd += ["--head", head]
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                                     os.environ.get("PYTHONPATH", "")])}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
                    raise ConfigError(f"exporting {model_path} to ONNX for backend {backend} failed ({last}); "
                                      "use backend \"torch\"")
            meta = {"stage": "model-export", "key": key,
                    "stats": {"model": str(model_path), "int8": precision == "int8", "head": head,
                              "builder": builder},
                    "seconds": time.perf_counter() - start, "created": time.time(), "files": file_records(tmp)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        log.info("exported %s to %s (%s) in %.1fs", model_path, entry, builder, time.perf_counter() - start)
    return entry / name


def _build_graph(model_dir: Path, out: Path, int8: bool, head: str = "token_embeddings") -> bool:
    """`out/model.onnx` built in this process by negmine.graph from the transformers folder `model_dir` (no torch:
    0.5 s and 135 MiB peak for MiniLM, against 8.4 s and 763 MiB for the torch child, measured on the same busy
    machine); False, with the reason logged, for a model it cannot mirror exactly: the torch child exports that."""
    from negmine import graph

    try:
        graph.build_onnx(model_dir, out / "model.onnx", head)
    except graph.Unsupported as e:
        log.info("the ONNX graph of %s is exported with torch: %s", model_dir, e.reason)
        return False
    if int8:
        _quantize(out)  # onnxruntime.quantization imports no torch
    return True


def _quantize(out: Path) -> None:
    """`out/model.onnx` (and its external data, if any) replaced by its int8 version `out/model-int8.onnx`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = out / "model.onnx"
    quantize_dynamic(str(target), str(out / "model-int8.onnx"),
                     **{**QUANTIZATION, "weight_type": getattr(QuantType, QUANTIZATION["weight_type"])})
    target.unlink()
    (out / "model.onnx.data").unlink(missing_ok=True)  # negmine.graph's external weights of a big model


def _export(model_path: Path, out: Path, int8: bool, head: str = "token_embeddings") -> None:
    """Child process: torch.onnx.export of the Transformer module (token embeddings out) or of a cross-encoder's
    sequence classifier (logits out), then int8 if asked."""
    import torch

    if head == "logits":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(cross_encoder_dir(model_path))).eval()
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(read_st_config(model_path)["transformer_dir"])).eval()
    import inspect

    names = [n for n in INPUTS if n in inspect.signature(model.forward).parameters]

    class Graph(torch.nn.Module):  # keyword call: transformers 5's forward takes no positional masks
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            res = self.model(**dict(zip(names, args)))
            return res.logits if head == "logits" else res.last_hidden_state

    example = tuple(torch.ones(2, 8, dtype=torch.long) if n != "token_type_ids" else
                    torch.zeros(2, 8, dtype=torch.long) for n in names)
    axes = {**{n: {0: "batch", 1: "tokens"} for n in names},
            head: {0: "batch"} if head == "logits" else {0: "batch", 1: "tokens"}}
    target = out / "model.onnx"
    with torch.inference_mode():
        torch.onnx.export(Graph(), example, str(target), input_names=names, output_names=[head],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    if int8:
        _quantize(out)


# ---- inference (no torch) -----------------------------------------------------------------------------------

def _runtime(graph: Path, backend: str, precision: str, threads: int) -> tuple[list[str], Any]:
    """(the graph's input names, a function feeds -> its first output) on onnxruntime or OpenVINO's CPU plugin."""
    if backend == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        return [i.name for i in session.get_inputs()], lambda feeds: session.run(None, feeds)[0]
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
    request = compiled.create_infer_request()
    return [i.get_any_name() for i in compiled.inputs], lambda feeds: next(iter(request.infer(feeds).values())).copy()


def _pad(ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]], idx: np.ndarray, lengths: np.ndarray,
         pad_id: int) -> dict[str, np.ndarray]:
    """The rows `idx` as right-padded int64 input_ids, attention_mask and token_type_ids (rows x longest)."""
    width = int(lengths[idx].max())
    input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    type_ids = np.zeros((len(idx), width), dtype=np.int64)
    for i, r in enumerate(idx):
        input_ids[i, :lengths[r]] = ids[r]
        type_ids[i, :lengths[r]] = types[r]
    mask = (np.arange(width)[None, :] < lengths[idx][:, None]).astype(np.int64)
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}


def _batches(lengths: np.ndarray, budget: int, batch_size: int) -> list[np.ndarray]:
    """Token-budget batches (`negmine.encode.token_batches`), or fixed batches of `batch_size` over the
    length-sorted rows when the budget is 0."""
    from negmine.encode import token_batches

    if budget:
        return token_batches(lengths, budget)
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

TOKENIZE_CHUNK = 256  # texts a tokenizer call in RuntimeEncoder


class RuntimeEncoder:
    """A sentence-transformers model run by onnxruntime or OpenVINO, with numpy pooling; imports no torch."""

    def __init__(self, model_path: Path, graph: Path, backend: str, precision: str, max_seq_length: int = 0,
                 threads: int = 0) -> None:
        from tokenizers import Tokenizer

        self.backend, self.precision = backend, precision
        self.cfg = read_st_config(model_path)
        self.max_seq_length = max_seq_length or self.cfg["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(str(self.cfg["transformer_dir"] / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        pad = self.tokenizer.token_to_id(self.cfg["pad_token"]) if self.cfg["pad_token"] else None
        self.pad_id = pad if pad is not None else 0
        self.input_names, self._run = _runtime(graph, backend, precision, threads)

    def get_sentence_embedding_dimension(self) -> int:
        return self.cfg["dim"]

    def tokenize(self, texts: list[str], prompt: str) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """Ids and type ids of `texts` (prompt first), as small arrays; and the prompt's length in tokens.

        The tokenizer runs on `TOKENIZE_CHUNK` texts at a time and only the ids are kept, as int32 arrays: its
        Encoding objects (tokens, offsets, masks) and Python int lists for a whole 4,096-text shard held about
        300 MiB, the largest part of a cold OpenVINO run's peak."""
        ids: list[np.ndarray] = []
        types: list[np.ndarray] = []
        for a in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = texts[a:a + TOKENIZE_CHUNK]
            enc = self.tokenizer.encode_batch([prompt + t for t in chunk] if prompt else chunk, add_special_tokens=True)
            ids += [np.asarray(e.ids, dtype=np.int32) for e in enc]
            types += [np.asarray(e.type_ids, dtype=np.int8) for e in enc]
            del enc
        prompt_len = len(self.tokenizer.encode(prompt).ids) - 1 if prompt else 0  # as sentence-transformers: no [SEP]
        return ids, types, prompt_len

    def encode(self, texts: list[str], prompt: str, budget: int, batch_size: int, normalize: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.cfg["dim"]), dtype=np.float32)
        ids, types, prompt_len = self.tokenize(texts, prompt)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        out = np.empty((len(texts), self.cfg["dim"]), dtype=np.float32)
        for idx in _batches(lengths, budget, batch_size):
            feeds = _pad(ids, types, idx, lengths, self.pad_id)
            hidden = self._run({k: v for k, v in feeds.items() if k in self.input_names}).astype(np.float32)
            out[idx] = self.pool(hidden, feeds["attention_mask"], prompt_len)
        if self.cfg["normalize"] or normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # torch's F.normalize eps
        return out

    def pool(self, hidden: np.ndarray, mask: np.ndarray, prompt_len: int) -> np.ndarray:
        """Sentence embeddings from token embeddings, as sentence-transformers' Pooling computes them."""
        m = mask.astype(np.float32)
        if prompt_len and not self.cfg["include_prompt"]:
            m[:, :prompt_len] = 0
        kind = self.cfg["pooling"]
        if kind == "cls":
            return hidden[:, 0]
        if kind == "max":
            return np.where(m[:, :, None] > 0, hidden, -1e9).max(axis=1)
        summed = np.einsum("bt,btd->bd", m, hidden)
        return summed / np.maximum(m.sum(axis=1, keepdims=True), 1e-9)


class RuntimeCrossEncoder:
    """A cross-encoder (one relevance logit) run by onnxruntime or OpenVINO; imports no torch.

    Pairs are tokenized as sentence-transformers' CrossEncoder tokenizes them: the tokenizer's pair encoding
    (query, document) with special tokens, truncated to max_length by the "longest_first" strategy (the longer
    of the two loses a token at a time) on the tokenizer's truncation side. The logit goes through the
    activation of `[score] activation`: sigmoid (probability) or none (logit).
    """

    def __init__(self, model_path: Path, graph: Path, backend: str, precision: str, max_length: int = 0,
                 activation: str = "probability", threads: int = 0) -> None:
        from tokenizers import Tokenizer

        self.backend, self.precision, self.activation = backend, precision, activation
        self.cfg = read_ce_config(model_path)
        self.max_length = max_length or self.cfg["max_length"]
        self.tokenizer = Tokenizer.from_file(str(self.cfg["transformer_dir"] / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length, strategy="longest_first",
                                         direction=self.cfg["truncation_side"])
        pad = self.tokenizer.token_to_id(self.cfg["pad_token"]) if self.cfg["pad_token"] else None
        self.pad_id = pad if pad is not None else 0
        self.input_names, self._run = _runtime(graph, backend, precision, threads)

    def tokenize(self, queries: list[str], docs: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Ids and type ids of each (query, document) pair, one tokenizer call."""
        enc = self.tokenizer.encode_batch(list(zip(queries, docs)), add_special_tokens=True)
        return [e.ids for e in enc], [e.type_ids for e in enc]

    def predict(self, queries: list[str], docs: list[str], budget: int, batch_size: int) -> np.ndarray:
        """float32 scores of the pairs, in their order; batched by token budget (0: by `batch_size`)."""
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries for {len(docs)} documents")
        out = np.empty(len(queries), dtype=np.float32)
        if not queries:
            return out
        ids, types = self.tokenize(queries, docs)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        for idx in _batches(lengths, budget, batch_size):
            feeds = _pad(ids, types, idx, lengths, self.pad_id)
            logits = self._run({k: v for k, v in feeds.items() if k in self.input_names})
            out[idx] = np.asarray(logits, dtype=np.float32).reshape(len(idx), -1)[:, 0]
        if self.activation == "probability":
            from scipy.special import expit

            out = expit(out).astype(np.float32)
        return out


def main(argv: list[str]) -> None:
    """`python -m negmine.backends MODEL_DIR OUT_DIR [--int8] [--head logits]`: the export child process."""
    rest = argv[2:]
    head = rest[rest.index("--head") + 1] if "--head" in rest else "token_embeddings"
    _export(Path(argv[0]), Path(argv[1]), "--int8" in rest, head)


if __name__ == "__main__":
    main(sys.argv[1:])
