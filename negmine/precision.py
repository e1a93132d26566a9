"""Which floating-point precision a model runs in, chosen by the hardware when asked for "auto".

`fp32` runs the model as saved. `bf16` and `fp16` keep the weights in fp32 and run the model under
`torch.autocast`, so matrix products (linear layers, attention) are computed in the 16-bit type while layer norms,
softmax and the residual stream stay in fp32: on MiniLM this kept every SciFact embedding at cosine >= 0.9999 to
its fp32 twin, where casting the weights themselves to bf16 fell to about 0.998. `auto` picks:

- CUDA (the configured device, or "" when a GPU is present): bf16 on compute capability >= 8.0 (Ampere and later,
  which multiply bf16 natively), else fp16;
- CPU: bf16 where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16: about four times the fp32 rate
  on such a CPU), else fp32, since emulated bf16 is slower than fp32;
- backend openvino (CPU only): bf16 where the CPU multiplies bf16 in hardware, else fp32;
- anything else (backend onnx, mps, xpu): fp32; int8 (onnx, openvino) is only ever chosen explicitly.

Deciding needs no torch import (a fully cached run never imports it): CPU flags come from /proc/cpuinfo and, for
a CUDA build of torch, the GPU's compute capability from the CUDA driver through ctypes. What "auto" resolved to
changes vectors and scores, so the resolved value, never "auto", enters cache keys and provenance.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import re
import sys
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return frozenset(m.group(1).split()) if m else frozenset()


def _torch_has_cuda() -> bool:
    """Whether the installed torch is a CUDA build, read from torch/version.py without importing torch."""
    if "torch" in sys.modules:
        return sys.modules["torch"].version.cuda is not None
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    version = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    try:
        return re.search(r"^cuda\s*(:[^=]*)?=\s*None\s*$", version.read_text(), re.MULTILINE) is None
    except OSError:
        return False


@functools.lru_cache(maxsize=8)
def cuda_capability(index: int = 0) -> tuple[int, int] | None:
    """Compute capability of CUDA device `index`, or None where torch has no CUDA or no GPU is visible."""
    if not _torch_has_cuda():
        return None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            return None
        return tuple(torch.cuda.get_device_capability(index))  # type: ignore[return-value]
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count, major, minor, dev = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or index >= count.value:
            return None
        if cuda.cuDeviceGet(ctypes.byref(dev), index) != 0:
            return None
        # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
        if cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) != 0 or \
                cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev) != 0:
            return None
        return major.value, minor.value
    except (OSError, AttributeError):
        return None


def _cuda_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def resolve(requested: str, device: str = "", backend: str = "torch", *, flags: Iterable[str] | None = None,
            capability: tuple[int, int] | None | str = "detect") -> str:
    """The precision a model runs in: `requested` unless it is "auto", then what this hardware runs best.

    `device` is the configured one ("" = CUDA when present, as sentence-transformers chooses); `flags` and
    `capability` override the detected CPU flags and GPU compute capability (tests fake them).
    """
    if requested != "auto":
        return requested
    if backend == "openvino":  # OpenVINO's CPU plugin runs bf16 where the CPU multiplies it in hardware
        return "bf16" if (cpu_flags() if flags is None else frozenset(flags)) & CPU_BF16_FLAGS else "fp32"
    if backend != "torch":
        return "fp32"  # onnxruntime: int8 is a choice, never a guess
    if device.startswith("cuda") or device == "":
        cap = cuda_capability(_cuda_index(device)) if capability == "detect" else capability
        if cap is not None:
            return "bf16" if tuple(cap) >= (8, 0) else "fp16"
        if device.startswith("cuda"):
            return "fp32"  # asked for a GPU that is not there: loading the model will say so
    if device in ("", "cpu"):
        have = cpu_flags() if flags is None else frozenset(flags)
        return "bf16" if have & CPU_BF16_FLAGS else "fp32"
    return "fp32"


def autocast(precision: str, device_type: str) -> ContextManager[Any]:
    """The context that runs a model's matrix products in `precision` (fp32 weights stay as they are)."""
    if precision == "fp32":
        return nullcontext()
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def fp32_head(model: Any, out_features: int) -> bool:
    """Run the last linear layer with `out_features` outputs (a cross-encoder's score head) in fp32 under autocast.

    Under autocast a linear layer's output is 16-bit: a bf16 logit keeps 8 bits of mantissa, so nearby scores
    collapse into ties (0.0610 and 0.0612 both become 0.06104). Computing only the head in fp32, on the 16-bit
    features, keeps scores continuous at no measurable cost. Returns whether such a layer was found.
    """
    import torch

    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == out_features]
    if not heads:
        return False
    head = heads[-1]
    forward = head.forward

    def fp32_forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float())

    head.forward = fp32_forward
    return True


def resolved_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """{"resolved": {"dense.precision": ..., "score.precision": ...}} for the models this config runs; {} if none."""
    out = {}
    if "dense" in cfg["retrieve"]["retrievers"] or cfg["filter"]["near_dup_cosine"] is not None:
        from negmine.encode import resolved_backend

        d = cfg["dense"]
        backend = resolved_backend(d)
        out["dense.precision"] = resolve(d["precision"], d["device"], backend)
        if backend != "torch":  # torch, the reference, is left out: its runs are described as before
            out["dense.backend"] = backend
    if cfg["score"]["teacher"]:
        from negmine.encode import resolve_model
        from negmine.score import resolved_backend as score_backend

        sc = cfg["score"]
        backend = score_backend(sc, resolve_model(sc["teacher"], "[score] teacher"))
        out["score.precision"] = resolve(sc["precision"], sc["device"], backend)
        if backend != "torch":
            out["score.backend"] = backend
    if "sparse" in cfg["retrieve"]["retrievers"]:
        from negmine.retrievers.sparse import resolved_precision

        out["sparse.precision"] = resolved_precision(cfg["sparse"])
    return {"resolved": out} if out else {}
