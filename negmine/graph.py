"""The ONNX graph of a BERT (or RoBERTa, XLM-R) encoder built from its config.json and safetensors, without torch.

Issue #11: exporting with `torch.onnx.export` costs a child process 8.4 s and 763 MiB peak RSS (torch and
transformers imports and tracing) for all-MiniLM-L6-v2 on a busy 2-vCPU machine, the largest memory cost of a cold
OpenVINO run; this builder takes 0.5 s and 135 MiB there (bench/README.md, "Exports without torch"). The BERT
forward is small and fixed, so this module writes the same computation directly with the `onnx` helpers, reading
the weights with `safetensors.numpy` one tensor at a time:

    embeddings = LayerNorm(word[input_ids] + token_type[token_type_ids] + position[0..T-1])
    per layer:  x = LayerNorm(x + Wo softmax(Q K^T / sqrt(d) + (1 - mask) * float32.min) V)
                x = LayerNorm(x + W2 gelu_erf(W1 x))

as transformers' `BertModel` computes it (modeling_bert.py: BertEmbeddings, eager_attention_forward, BertIntermediate
with ACT2FN["gelu"], the exact erf form). Heads: `token_embeddings` (last_hidden_state, what
`negmine.backends.RuntimeEncoder` pools) and `logits` (BertForSequenceClassification: pooler dense + tanh on the
first token, then the classifier). RoBERTa and XLM-RoBERTa are the same encoder with positions counted from
pad_token_id + 1 over the non-pad tokens (RobertaEmbeddings.create_position_ids_from_input_ids), and their
classification head (RobertaClassificationHead) has its own dense + tanh instead of a pooler. Anything this
module cannot mirror exactly raises `Unsupported`, and the caller exports with torch instead: so a model is
either built exactly or not at all.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

HEADS = ("token_embeddings", "logits")
# model_type -> the prefix of the encoder's weights in a task model's checkpoint (a bare model's have none)
PREFIXES = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta."}
# Weights above this are written to "<graph>.data" beside the graph (protobuf refuses messages over 2 GB).
EXTERNAL_DATA_BYTES = 1_500_000_000
OPSET = 17  # LayerNormalization
IR_VERSION = 8  # the IR of opset 17: runtimes older than this onnx package read it too
_FLOAT_MIN = float(np.finfo(np.float32).min)


class Unsupported(Exception):
    """The model is not one this builder mirrors exactly; `reason` says why (the caller falls back to torch)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- reading: config, weight names, shapes ------------------------------------------------------------------

def _config(model_dir: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise Unsupported(f"{model_dir}/config.json is missing or not JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise Unsupported(f"{model_dir}/config.json is not a JSON object")
    kind = cfg.get("model_type")
    if kind not in PREFIXES:
        raise Unsupported(f"model_type {kind!r}: the graph builder mirrors {', '.join(PREFIXES)} only")
    # BertConfig's defaults where a key is absent (RobertaConfig's are the same but for pad_token_id)
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise Unsupported(f"position_embedding_type {cfg['position_embedding_type']!r}: only absolute positions")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise Unsupported(f"hidden_act {cfg['hidden_act']!r}: only the exact (erf) gelu")
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise Unsupported("a decoder (is_decoder / add_cross_attention): only bidirectional encoders")
    try:
        dims = {k: int(cfg[k]) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "intermediate_size", "vocab_size", "max_position_embeddings")}
        dims["type_vocab_size"] = int(cfg.get("type_vocab_size", 2))
        eps = float(cfg.get("layer_norm_eps", 1e-12))
        pad = int(cfg.get("pad_token_id", 0 if kind == "bert" else 1))
    except (KeyError, TypeError, ValueError) as e:
        raise Unsupported(f"config.json lacks a usable {e}") from None
    if min(dims.values()) <= 0 or dims["hidden_size"] % dims["num_attention_heads"] or not 0 < eps < 1:
        raise Unsupported(f"config.json sizes {dims} (eps {eps}) do not describe a BERT encoder")
    return {**dims, "layer_norm_eps": eps, "kind": kind, "pad_token_id": pad}


def _open(path: Path) -> Any:
    """safe_open of a weight file; a damaged one is Unsupported here (the torch export then says what is wrong)."""
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="np")
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, or ValueError by version
        raise Unsupported(f"{path} is unreadable ({e})") from None


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Each tensor's safetensors file, as transformers looks for them: model.safetensors, else its shard index."""
    single = model_dir / "model.safetensors"
    if single.is_file():
        with _open(single) as f:
            return {k: single for k in f.keys()}
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = {str(k): model_dir / str(v) for k, v in weight_map.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise Unsupported(f"{index} is unreadable ({e})") from None
        missing = sorted({str(p) for p in files.values() if not p.is_file()})
        if missing:
            raise Unsupported(f"{index} names missing shards: {', '.join(missing)}")
        return files
    if any((model_dir / n).is_file() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise Unsupported(f"{model_dir} holds pytorch_model.bin weights only, which need torch to read")
    raise Unsupported(f"{model_dir} has no model.safetensors")


def _classifier(cfg: dict[str, Any], prefix: str) -> tuple[str, str]:
    """The sequence classification head's two linear layers (dense + tanh on the first token, then out):
    BERT's pooler and classifier; RoBERTa's RobertaClassificationHead."""
    if cfg["kind"] == "bert":
        return prefix + "pooler.dense", "classifier"
    return "classifier.dense", "classifier.out_proj"


def _layout(names: set[str], cfg: dict[str, Any], head: str) -> tuple[str, set[str]]:
    """The checkpoint's name prefix ("" or "bert.", "roberta.") and the set of names this head reads.

    Every other name must be one the torch model ignores too (transformers' AutoModel drops a task head's weights;
    the pooler is not in last_hidden_state), so an unknown tensor (an adapter, a renamed layer) is refused
    instead of silently left out.
    """
    prefix = PREFIXES[cfg["kind"]]
    prefix = prefix if any(n.startswith(prefix + "embeddings.") for n in names) else ""
    used = {f"embeddings.{e}.weight" for e in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    used |= {"embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"}
    for i in range(cfg["num_hidden_layers"]):
        base = f"encoder.layer.{i}."
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "intermediate.dense", "output.dense", "attention.output.LayerNorm", "output.LayerNorm"):
            used |= {f"{base}{part}.weight", f"{base}{part}.bias"}
    used = {prefix + n for n in used}
    if head == "logits":
        used |= {f"{layer}.{w}" for layer in _classifier(cfg, prefix) for w in ("weight", "bias")}
    missing = sorted(used - names)
    if missing:
        raise Unsupported(f"the weights lack {len(missing)} tensors the {head} head needs, e.g. {missing[0]}")
    buffers = {prefix + "embeddings.position_ids", prefix + "embeddings.token_type_ids"}
    pooler = rf"{re.escape(prefix)}pooler\.dense\.(weight|bias)"
    if head == "token_embeddings":  # a task model's head: BERT's classifier or pretraining heads, RoBERTa's too
        ignored = re.compile(rf"^{pooler}$|^(classifier(\.dense|\.out_proj)?|(cls|lm_head)\.[a-z_.]+)\.(weight|bias)$"
                             r"|^(cls\.predictions|lm_head)\.bias$")
    else:  # RobertaForSequenceClassification has no pooler: transformers drops one a checkpoint holds
        ignored = re.compile(rf"^{pooler}$" if cfg["kind"] != "bert" else r"^$")
    unknown = sorted(n for n in names - used - buffers if not ignored.match(n))
    if unknown:
        raise Unsupported(f"unrecognised weight {unknown[0]!r} ({len(unknown)} in all): the graph would leave it out")
    return prefix, used


def _expected_shapes(cfg: dict[str, Any], prefix: str, num_labels: int) -> dict[str, tuple[int, ...]]:
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (cfg["vocab_size"], h),
        "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for i in range(cfg["num_hidden_layers"]):
        base = f"encoder.layer.{i}."
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[f"{base}{part}.weight"], shapes[f"{base}{part}.bias"] = (h, h), (h,)
        for part in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{base}{part}.weight"], shapes[f"{base}{part}.bias"] = (h,), (h,)
        shapes[f"{base}intermediate.dense.weight"], shapes[f"{base}intermediate.dense.bias"] = (f, h), (f,)
        shapes[f"{base}output.dense.weight"], shapes[f"{base}output.dense.bias"] = (h, f), (h,)
    out = {prefix + k: v for k, v in shapes.items()}
    dense, last = _classifier(cfg, prefix)
    out[f"{dense}.weight"], out[f"{dense}.bias"] = (h, h), (h,)
    out[f"{last}.weight"], out[f"{last}.bias"] = (num_labels, h), (num_labels,)
    return out


def _num_labels(model_dir: Path, files: dict[str, Path], last: str) -> int:
    """The classifier's rows, checked against the config's labels (id2label, as transformers counts them)."""
    with _open(files[f"{last}.weight"]) as f:
        rows = int(f.get_slice(f"{last}.weight").get_shape()[0])
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    labels = len(cfg["id2label"]) if isinstance(cfg.get("id2label"), dict) else cfg.get("num_labels", rows)
    if labels != rows:
        raise Unsupported(f"config.json has {labels} labels but {last}.weight {rows} rows")
    return rows


def _check_tensors(files: dict[str, Path], used: set[str], shapes: dict[str, tuple[int, ...]]) -> int:
    """Dtype and shape of every used tensor (from the file headers, nothing loaded); their bytes in all."""
    total = 0
    for path in sorted(set(files.values())):
        with _open(path) as f:
            missing = sorted(n for n in used if files[n] == path and n not in f.keys())
            if missing:
                raise Unsupported(f"{path} lacks {missing[0]}, which its shard index places there")
            for name in sorted(n for n in used if files[n] == path):
                sl = f.get_slice(name)
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                if dtype != "F32":
                    raise Unsupported(f"{name} is stored as {dtype}: the graph builder writes float32 weights only")
                if shape != shapes[name]:
                    raise Unsupported(f"{name} has shape {list(shape)}, the config implies {list(shapes[name])}")
                total += 4 * math.prod(shape)
    return total


# ---- writing ------------------------------------------------------------------------------------------------

class _Graph:
    """Nodes, small constants, and references to the checkpoint's weights (read only when the file is written)."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.consts: list[Any] = []
        self.weights: list[tuple[str, str, bool]] = []  # (initializer, checkpoint tensor, transposed)
        self._n = 0

    def op(self, kind: str, inputs: list[str], name: str, **attrs: Any) -> str:
        from onnx import helper

        self._n += 1
        out = f"{name}/{kind}_{self._n}"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.consts.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, source: str, transpose: bool = False) -> str:
        name = source + (".T" if transpose else "")
        self.weights.append((name, source, transpose))
        return name


def _linear(g: _Graph, x: str, weight: str, name: str) -> str:
    """x W^T + b as torch.onnx exports nn.Linear on 3-d inputs: MatMul with the transposed weight, then Add."""
    return g.op("Add", [g.op("MatMul", [x, g.weight(f"{weight}.weight", transpose=True)], name),
                        g.weight(f"{weight}.bias")], name)


def _layer_norm(g: _Graph, x: str, weight: str, eps: float) -> str:
    return g.op("LayerNormalization", [x, g.weight(f"{weight}.weight"), g.weight(f"{weight}.bias")], weight,
                axis=-1, epsilon=eps)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _record(field: int, length: int) -> bytes:
    """A length-delimited protobuf field's tag and length."""
    return _varint(field << 3 | 2) + _varint(length)


def _write(model: Any, g: _Graph, files: dict[str, Path], shapes: dict[str, tuple[int, ...]], out_file: Path,
           external: Path | None) -> None:
    """Serialize `model` with the weights of `g` as initializers, reading and writing one tensor at a time.

    `SerializeToString()` of a model holding its weights would need them all in memory twice. Protobuf's wire
    format is a sequence of (field, length, bytes) records in any order, and every record's size is known from
    the shapes before any weight is read: so the graph record is written as its small fields, then one record
    per weight, whose raw data goes from the array read out of safetensors straight to the file (or, with
    `external`, to that data file, the record holding its offset and length as onnx's external data does).
    """
    from onnx import GraphProto, ModelProto, TensorProto

    graph_field = ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    init_field = GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
    raw_field = TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
    metas, offset = [], 0
    for name, source, transpose in g.weights:
        dims = shapes[source][::-1] if transpose else shapes[source]
        nbytes = 4 * math.prod(dims)
        meta = TensorProto(name=name, dims=list(dims), data_type=TensorProto.FLOAT)
        if external is not None:
            meta.data_location = TensorProto.EXTERNAL
            for key, val in (("location", external.name), ("offset", str(offset)), ("length", str(nbytes))):
                entry = meta.external_data.add()
                entry.key, entry.value = key, val
            offset += nbytes
        metas.append((meta.SerializeToString(), nbytes if external is None else 0))  # bytes inline
    sizes = [len(body) + (len(_record(raw_field, n)) + n if n else 0) for body, n in metas]
    graph = model.graph
    graph_len = graph.ByteSize() + sum(len(_record(init_field, n)) + n for n in sizes)
    graph_bytes = graph.SerializeToString()
    model.ClearField("graph")
    data = open(external, "wb") if external is not None else None
    try:
        with open(out_file, "wb") as fh:
            fh.write(model.SerializeToString())
            fh.write(_record(graph_field, graph_len) + graph_bytes)
            for (name, source, transpose), (body, nbytes), size in zip(g.weights, metas, sizes):
                # each tensor by its own open: the mapped file's pages leave this process's RSS when it closes
                with _open(files[source]) as f:
                    value = f.get_tensor(source)
                value = np.ascontiguousarray(value.T if transpose else value, dtype="<f4")
                fh.write(_record(init_field, size) + body)
                if data is None:
                    fh.write(_record(raw_field, nbytes))
                    fh.write(memoryview(value).cast("B"))
                else:
                    data.write(memoryview(value).cast("B"))
                del value
    finally:
        if data is not None:
            data.close()


def build_onnx(model_dir: Path, out_file: Path, head: str) -> None:
    """Write the ONNX graph of the BERT/RoBERTa model in `model_dir` (config.json + safetensors) to `out_file`.

    Inputs `input_ids`, `attention_mask`, `token_type_ids` (int64, batch x tokens); output `token_embeddings`
    (float32 batch x tokens x hidden, transformers' last_hidden_state) for head "token_embeddings", or `logits`
    (float32 batch x num_labels, AutoModelForSequenceClassification's) for head "logits". Raises `Unsupported` before
    writing anything when the model is not one this builder mirrors exactly. Weights over EXTERNAL_DATA_BYTES go
    to `<out_file>.data` beside it. Memory: one tensor of the checkpoint at a time (and its transpose).
    """
    model_dir, out_file = Path(model_dir), Path(out_file)
    if head not in HEADS:
        raise ValueError(f"head {head!r} is not one of {HEADS}")
    try:
        import safetensors  # noqa: F401
        from onnx import TensorProto, helper
    except ImportError as e:
        raise Unsupported(f"building the graph needs the onnx and safetensors packages ({e})") from None
    cfg = _config(model_dir)
    files = _weight_files(model_dir)
    prefix, used = _layout(set(files), cfg, head)
    num_labels = _num_labels(model_dir, files, _classifier(cfg, prefix)[1]) if head == "logits" else 0
    shapes = _expected_shapes(cfg, prefix, num_labels)
    total = _check_tensors(files, used, shapes)

    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim, eps = h // heads, cfg["layer_norm_eps"]
    g = _Graph()
    emb = prefix + "embeddings."
    # embeddings: word + token type, then + position, in the order BertEmbeddings adds them
    x = g.op("Add", [g.op("Gather", [g.weight(emb + "word_embeddings.weight"), "input_ids"], "embeddings"),
                     g.op("Gather", [g.weight(emb + "token_type_embeddings.weight"), "token_type_ids"],
                          "embeddings")], "embeddings")
    if cfg["kind"] == "bert":  # positions 0..tokens-1: the table's first rows (BertEmbeddings' position_ids)
        zero = g.const("const.zero", np.array([0], dtype=np.int64))
        tokens = g.op("Shape", ["input_ids"], "embeddings", start=1, end=2)
        positions = g.op("Slice", [g.weight(emb + "position_embeddings.weight"), zero, tokens, zero], "embeddings")
    else:  # RoBERTa: cumsum(id != pad) * (id != pad) + pad (create_position_ids_from_input_ids): pads get pad
        pad = g.const("const.pad_id", np.array(cfg["pad_token_id"], dtype=np.int64))
        real = g.op("Cast", [g.op("Not", [g.op("Equal", ["input_ids", pad], "embeddings")], "embeddings")],
                    "embeddings", to=TensorProto.INT64)
        count = g.op("CumSum", [real, g.const("const.tokens_axis", np.array(1, dtype=np.int64))], "embeddings")
        ids = g.op("Add", [g.op("Mul", [count, real], "embeddings"), pad], "embeddings")
        positions = g.op("Gather", [g.weight(emb + "position_embeddings.weight"), ids], "embeddings")
    x = g.op("Add", [x, positions], "embeddings")
    x = _layer_norm(g, x, emb + "LayerNorm", eps)

    # (1 - mask) * float32.min, batch x 1 x 1 x tokens: transformers' additive mask of eager attention
    one_f = g.const("const.one", np.array(1.0, dtype=np.float32))
    mask = g.op("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)
    mask = g.op("Mul", [g.op("Sub", [one_f, mask], "mask"),
                        g.const("const.float_min", np.array(_FLOAT_MIN, dtype=np.float32))], "mask")
    mask = g.op("Unsqueeze", [mask, g.const("const.axes_1_2", np.array([1, 2], dtype=np.int64))], "mask")
    split = g.const("const.split_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge = g.const("const.merge_heads", np.array([0, 0, h], dtype=np.int64))
    sqrt_d = g.const("const.sqrt_head_dim", np.array(math.sqrt(head_dim), dtype=np.float32))
    sqrt2 = g.const("const.sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    half = g.const("const.half", np.array(0.5, dtype=np.float32))
    for i in range(cfg["num_hidden_layers"]):
        n = f"{prefix}encoder.layer.{i}."
        q, k, v = (g.op("Reshape", [_linear(g, x, f"{n}attention.self.{p}", n), split], n)
                   for p in ("query", "key", "value"))
        q = g.op("Transpose", [q], n, perm=[0, 2, 1, 3])
        k = g.op("Transpose", [k], n, perm=[0, 2, 3, 1])
        v = g.op("Transpose", [v], n, perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Div", [g.op("MatMul", [q, k], n), sqrt_d], n), mask], n)
        context = g.op("MatMul", [g.op("Softmax", [scores], n, axis=-1), v], n)
        context = g.op("Reshape", [g.op("Transpose", [context], n, perm=[0, 2, 1, 3]), merge], n)
        x = _layer_norm(g, g.op("Add", [_linear(g, context, f"{n}attention.output.dense", n), x], n),
                        f"{n}attention.output.LayerNorm", eps)
        inner = _linear(g, x, f"{n}intermediate.dense", n)
        # gelu, erf form: x * (1 + erf(x / sqrt 2)) * 0.5, in the order torch.onnx exports F.gelu
        erf = g.op("Add", [g.op("Erf", [g.op("Div", [inner, sqrt2], n)], n), one_f], n)
        inner = g.op("Mul", [g.op("Mul", [inner, erf], n), half], n)
        x = _layer_norm(g, g.op("Add", [_linear(g, inner, f"{n}output.dense", n), x], n), f"{n}output.LayerNorm",
                        eps)

    if head == "token_embeddings":
        g.nodes.append(helper.make_node("Identity", [x], ["token_embeddings"], name="token_embeddings"))
        output = helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "tokens", h])
    else:  # first token, dense, tanh, then the output layer; dropout is the identity at inference
        dense, last = _classifier(cfg, prefix)
        first = g.op("Gather", [x, g.const("const.first", np.array(0, dtype=np.int64))], "head", axis=1)
        pooled = g.op("Tanh", [_linear(g, first, dense, "head")], "head")
        g.nodes.append(helper.make_node("Identity", [_linear(g, pooled, last, "head")], ["logits"], name="logits"))
        output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_labels])
    assert {s for _, s, _ in g.weights} == used, "every checked tensor is in the graph, and only those"
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "tokens"])
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(g.nodes, f"negmine-bert-{head}", inputs, [output], initializer=g.consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="negmine.graph",
                              ir_version=IR_VERSION)
    external = out_file.with_name(out_file.name + ".data") if total > EXTERNAL_DATA_BYTES else None
    try:
        _write(model, g, files, shapes, out_file, external)
    except BaseException:
        for p in (out_file, external):
            if p is not None:
                p.unlink(missing_ok=True)
        raise
