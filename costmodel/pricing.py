"""Price one cost op at concrete sizes (B, S, L) with the perf database; roofline where no table fits.

Op -> query:
- Gemm (weight operand) -> ``db.gemm(m, n, k, quant)``; the quant is the model's GEMM mode unless the op's module is
  excluded by the quantization config. A batched GEMM (``batch`` independent products, e.g. MLA's absorbed
  per-head projections) is priced as one GEMM of the same FLOPs and weight traffic, ``gemm(m, n * batch, k)``:
  running ``batch`` separate kernels would add ``batch`` launch latencies a grouped/batched kernel does not pay.
- Attention context -> ``db.context_attention(batch, q_len, q_heads, kv_heads, head_dim, window)``; generation ->
  ``db.generation_attention(batch, kv_len - 1, ...)`` (the op's kv_len counts the new token, the table's step does
  not). A context op over a cached prefix (kv_len != q_len) or with head_dim != v_head_dim, non-causal attention:
  roofline.
- MLA -> ``db.context_mla`` / ``db.generation_mla`` (num_heads per GPU).
- MoE -> ``db.moe(tokens, hidden, inter, topk, experts, tp, ep, quant)``.
- Conv (depthwise, causal) -> ``db.causal_conv1d`` (a decode conv over the cached window is the one-token state
  update); other convs: roofline.
- Scan: variant "delta" -> ``db.gdn`` (k heads taken equal to v heads: the op does not carry them apart); variant
  "ssm" -> ``db.ssm_scan`` (itself a roofline); else roofline from the op's FLOPs and bytes.
- Comm -> all_reduce through the backend's own all-reduce table where it exists (custom_allreduce), else the NCCL
  tables; p2p -> ``db.p2p``.
- Norms and activations -> ``db.elementwise`` (elementwise_perf) where a row of their kind fits their bytes;
  Unsupported -> ``db.aten`` (aten_perf) where the op was replayed at its shapes and constant arguments.
- Otherwise Embedding, MemoryBound, Unsupported -> ``db.roofline(flops, bytes)``. Norms, activations and the embedding
  lookup are kernels of their own in serving engines and take at least MIN_KERNEL_MS: no kernel finishes faster
  than a launch, and the fastest rows of the h200_sxm tables (tiny GEMMs, custom all-reduce, conv1d updates) take
  2.4-3.5 us, so the floor is 2.5 us. Rotary, KV-cache writes, casts, copies and routing math are fused into the
  attention / routing kernels by the engines (TensorRT-LLM, vLLM, SGLang), so they add only their bytes.
  Provenance stays "roofline".

``Pricer.price(op, sizes)`` is one run of the op (multiply by ``op.count``). Prices are cached per query, so one
shape shared by many ops or many sweep points is looked up once.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from costmodel.database import Database, Price
from costmodel.overheads import EP_SUFFIX
from costmodel.tables.specs import CUSTOM_ALLREDUCE
from core.ops import (MLA, Attention, Comm, Conv, ConvInGdn, CostOp, Embedding, Gemm, MemoryBound, MoE, Scan,
                      Unsupported, _ev)
from core.dtypes import FORMAT_ALIASES, QUANT_ALIASES, QUANT_MODES, canonical, element_bytes
from core.errors import UserError
from core.quant_config import declared_quantization

PRICED_KV_DTYPES = ("bf16", "fp8")  # the KV-cache dtypes the attention tables measure

# ---------------------------------------------------------------------------------------------
# Quantization
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Quant:
    mode: str                      # key of QUANT_MODES
    kv_dtype: str                  # bf16 | fp8
    exclude: tuple[str, ...] = ()  # module patterns left unquantized (modules_to_not_convert, ignore)
    source: str = "default"        # "config: <quant_method>", "--quant", "default"

    @property
    def gemm(self) -> str:
        return QUANT_MODES[self.mode].gemm

    @property
    def moe(self) -> str:
        return QUANT_MODES[self.mode].moe

    @property
    def weight_bytes(self) -> float:
        return QUANT_MODES[self.mode].weight_bytes

    @property
    def kv_bytes(self) -> float:
        return element_bytes(self.kv_dtype)

    def excluded(self, module: str) -> bool:
        return any(_matches(module, _unwrapped(pattern.removeprefix("re:"), module)) for pattern in self.exclude)

    def to_json(self) -> dict:
        return {"mode": self.mode, "gemm": self.gemm, "moe": self.moe, "weight_bytes": self.weight_bytes,
                "kv_dtype": self.kv_dtype, "exclude": list(self.exclude), "source": self.source}


def _matches(module: str, p: str) -> bool:
    if module == p or module.startswith(p + ".") or fnmatch.fnmatchcase(module, p) \
            or fnmatch.fnmatchcase(module, p + ".*"):
        return True
    # a bare name (modules_to_not_convert: ["gate", "lm_head"]) names every module of that name
    if "." not in p and "*" not in p and module.rsplit(".", 1)[-1] == p:
        return True
    # patterns often name the text model without its prefix (model.layers.* vs language_model.layers.*)
    return "*" in p and fnmatch.fnmatchcase(module, "*" + p.lstrip("*"))


def _unwrapped(pattern: str, module: str) -> str:
    """A composite checkpoint's pattern names the text model under its wrapper modules (language_model.model.layers.0
    where the text model traced alone is model.layers.0): drop the literal parts the module's path lacks that come
    before a part it has, where what is left starts where the module's path starts (the text model's root)."""
    parts, root = pattern.split("."), module.split(".")
    last = max((i for i, part in enumerate(parts) if part in root), default=-1)
    kept = [part for i, part in enumerate(parts) if i >= last or part in root or any(c in part for c in "*?[")]
    return ".".join(kept) if kept[0] == root[0] else pattern


def _mode_name(value: str, what: str) -> str:
    name = QUANT_ALIASES.get(value.lower(), value.lower())
    if name not in QUANT_MODES:
        raise UserError(f"unknown {what} {value!r}; known: {', '.join(QUANT_MODES)}")
    return name


def _from_config(qc: dict) -> tuple[str | None, str | None]:
    """(mode, kv_dtype) read from a quantization_config's fields, generically."""
    method = str(qc.get("quant_method") or qc.get("quant_algo") or "").lower()
    algo = str(qc.get("quant_algo") or "").lower()
    kv = None
    kv_field = qc.get("kv_cache_quant_algo") or qc.get("kv_cache_scheme")
    if kv_field:
        text = str(kv_field).lower()
        kv = "fp8" if ("fp8" in text or "float" in text or "8" in text) else None
    block = qc.get("weight_block_size") or qc.get("block_size")
    fmt = str(qc.get("fmt") or qc.get("format") or "").lower()
    if "nvfp4" in method or "nvfp4" in algo or "nvfp4" in fmt:
        return "nvfp4", kv
    if "mxfp4" in method or "mxfp4" in algo or "mxfp4" in fmt:
        return "mxfp4", kv
    if "fp8" in method or "fp8" in algo or "e4m3" in fmt:
        return ("fp8_block" if block else "fp8"), kv
    groups = qc.get("config_groups")
    if isinstance(groups, dict) and groups:  # compressed-tensors
        weights = next(iter(groups.values())).get("weights") or {}
        bits, kind = weights.get("num_bits"), str(weights.get("type", "")).lower()
        if "nvfp4" in fmt or (bits == 4 and kind == "float"):
            return "nvfp4", kv
        if bits == 8 and kind == "float":
            return ("fp8_block" if weights.get("block_structure") else "fp8"), kv
        if bits == 8:
            acts = next(iter(groups.values())).get("input_activations")
            return ("w8a8" if acts else "int8_wo"), kv
        if bits == 4:
            return "int4_wo", kv
    if qc.get("load_in_4bit"):
        return "int4_wo", kv
    if qc.get("load_in_8bit"):
        return "int8_wo", kv
    bits = qc.get("bits") or qc.get("w_bit") or qc.get("num_bits")
    if bits == 4:
        return "int4_wo", kv
    if bits == 8:
        return "int8_wo", kv
    return None, kv


def resolve_quant(config: dict | None, quant: str | None = None, kv_dtype: str | None = None) -> Quant:
    """The model's quantization: the quantization_config its checkpoint declares, at the top level or in a
    composite's sub-config (fp8, fp8 block, nvfp4, mxfp4, int4/int8 weight-only; generically from its fields),
    overridden by `quant` / `kv_dtype`."""
    qc = (declared_quantization(config) or ("", {}))[1]
    mode, kv, source, exclude = None, None, "default", ()
    if isinstance(qc, dict) and qc:
        mode, kv = _from_config(qc)
        if mode:
            source = f"config: {qc.get('quant_method') or qc.get('quant_algo') or mode}"
            exclude = tuple(qc.get("modules_to_not_convert") or qc.get("ignore") or qc.get("ignored_layers")
                            or qc.get("exclude_modules") or ())
    if quant is not None:
        asked = _mode_name(quant, "--quant")
        # fp8 over a checkpoint already holding block-scaled fp8, or nvfp4 over one holding mxfp4, names its own
        # weights: the engine loads them as they are (it does not requantize a quantized checkpoint) and runs its
        # kernels for them (vLLM's fp8 method reads weight_block_size), with its exclusions
        if (asked, mode) not in (("fp8", "fp8_block"), ("nvfp4", "mxfp4")):
            mode, source, exclude = asked, "--quant", ()
        else:
            source = f"--quant {quant} ({source})"
    if kv_dtype is not None:
        kv = {"fp16": "bf16"}.get(canonical(kv_dtype), canonical(kv_dtype))  # same size, same kernels
        if kv not in PRICED_KV_DTYPES:
            raise UserError(f"unknown --kv-dtype {kv_dtype!r}; known: {', '.join(PRICED_KV_DTYPES)}")
    return Quant(mode or "bf16", kv or "bf16", tuple(str(e) for e in exclude), source)


def output_heads(prefill_ops) -> tuple[str, ...]:
    """The modules of the weight GEMMs that run once per sequence, not per prompt token: the output (LM) head. An
    engine quantizing a checkpoint itself leaves it unquantized: vLLM's fp8 method quantizes linear and expert layers
    only, and its ParallelLMHead is an embedding (vllm/model_executor/layers/quantization/fp8.py, get_quant_method)."""
    one, two = {"B": 1, "S": 1, "L": 0}, {"B": 1, "S": 2, "L": 0}
    return tuple(sorted({op.module for op in prefill_ops if isinstance(op, Gemm) and op.operand == "weight"
                         and _ev(op.m, one) == _ev(op.m, two)}))


# ---------------------------------------------------------------------------------------------
# Pricer
# ---------------------------------------------------------------------------------------------


def _int(x) -> float:
    """Table axes are integer counts; symbolic sizes may evaluate to floats (e.g. a split (B*32)/3)."""
    r = round(x)
    return r if abs(x - r) < 1e-9 else x


MIN_KERNEL_MS = 0.0025
# MemoryBound.what labels engines launch as kernels of their own -> the elementwise_perf kernels that measure them,
# in order of preference
ELEMENTWISE_KERNELS = {"norm": ("rmsnorm", "layernorm"), "activation": ("silu_and_mul", "gelu_tanh")}
KERNEL_OF_ITS_OWN = frozenset(ELEMENTWISE_KERNELS)


class Pricer:
    """Prices cost ops for one database and quantization, with a cache per query."""

    def __init__(self, db: Database, quant: Quant, mxfp4_moe_activation: str = "bf16",
                 moe_kernels: tuple[tuple[str, str], ...] = (), fp8_input_scale: str = "dynamic"):
        self.db = db
        self.quant = quant
        self.moe_kernels = dict(moe_kernels)   # the engine's kernel family per MoE dtype (Overheads.moe_kernels)
        self.static_fp8_input = fp8_input_scale == "static"   # Overheads.fp8_input_scale
        self._cache: dict[tuple, Price] = {}
        self._excluded: dict[str, bool] = {}
        has_fp4 = db.system.fp4_dense_flops_per_s is not None
        self._gemm_quant, self.moe_quant = quant.gemm, quant.moe
        if quant.mode == "mxfp4" and has_fp4:
            self._gemm_quant = "nvfp4"
            if mxfp4_moe_activation == "mxfp8":   # the engine's choice (Overheads.mxfp4_moe_activation)
                self.moe_quant = "w4a8_mxfp4_mxfp8"
        if quant.mode == "nvfp4" and not has_fp4:
            raise UserError(f"{db.system.name} ({db.system.gpu}) has no FP4 tensor cores for nvfp4; "
                            f"use --quant int4_wo or fp8")
        self._custom_ar = None

    def _query(self, key: tuple, fn, *args, **kw) -> Price:
        price = self._cache.get(key)
        if price is None:
            price = self._cache[key] = fn(*args, **kw)
        return price

    def _is_excluded(self, module: str) -> bool:
        v = self._excluded.get(module)
        if v is None:
            v = self._excluded[module] = self.quant.excluded(module)
        return v

    def gemm_quant(self, op: Gemm) -> str:
        # activation GEMMs, modules the config leaves unquantized, and GEMMs traced in fp32 (routers kept in full
        # precision) run in bf16
        if op.operand != "weight" or op.dtype not in ("bfloat16", "float16") or self._is_excluded(op.module):
            return "bf16"
        return self._gemm_quant

    def price(self, op: CostOp, sizes: dict) -> Price:
        fn = _PRICERS.get(type(op))
        if fn is None:
            for cls, f in _PRICERS.items():
                if isinstance(op, cls):
                    fn = f
                    break
        return fn(self, op, sizes) if fn else self.roofline(op, sizes)

    def roofline(self, op: CostOp, sizes: dict, precision: str = "bf16") -> Price:
        flops, nbytes = max(op.flops(sizes), 0.0), max(op.bytes(sizes), 0.0)
        return self._query(("roofline", flops, nbytes, precision), self.db.roofline, flops, nbytes, precision)

    def use_custom_allreduce(self) -> bool:
        if self._custom_ar is None:
            self._custom_ar = self.db.has_variant(CUSTOM_ALLREDUCE, ("bfloat16",))
        return self._custom_ar


_PRICERS: dict[type, callable] = {}


def prices(cls):
    """Register the pricing rule of one cost-op type (a subclass without its own rule uses its base's)."""
    def wrap(fn):
        _PRICERS[cls] = fn
        return fn
    return wrap


@prices(Gemm)
def _gemm(p: Pricer, op: Gemm, sizes) -> Price:
    m = _int(_ev(op.m, sizes))
    batch = _int(_ev(op.batch, sizes))
    if m <= 0 or batch <= 0:
        return Price(0.0, "exact", "empty")
    n = op.n * batch
    q = p.gemm_quant(op)
    return p._query(("gemm", m, n, op.k, q), p.db.gemm, m, n, op.k, q, static_input_scale=p.static_fp8_input)


def _attention_sizes(op, sizes) -> tuple[int, int, int]:
    """Batch, query length and key length of an Attention or MLA op at these sizes."""
    return _int(_ev(op.batch, sizes)), _int(_ev(op.q_len, sizes)), _int(_ev(op.kv_len, sizes))


@prices(Attention)
def _attention(p: Pricer, op: Attention, sizes) -> Price:
    b, q, kv = _attention_sizes(op, sizes)
    if b <= 0 or q <= 0:
        return Price(0.0, "exact", "empty")
    kvd = p.quant.kv_dtype
    if op.head_dim == op.v_head_dim and op.causal:
        if op.phase == "generation" and q == 1:
            key = ("gen_attn", b, kv - 1, op.q_heads, op.kv_heads, op.head_dim, op.window, kvd)
            return p._query(key, p.db.generation_attention, b, max(kv - 1, 1), op.q_heads, op.kv_heads,
                            op.head_dim, op.window, kvd)
        if op.phase == "context" and kv == q:
            dtype = "fp8" if kvd == "fp8" and p.quant.gemm in ("fp8", "fp8_block") else "bf16"
            key = ("ctx_attn", b, q, op.q_heads, op.kv_heads, op.head_dim, op.window, dtype, kvd)
            return p._query(key, p.db.context_attention, b, q, op.q_heads, op.kv_heads, op.head_dim,
                            op.window, dtype, kvd)
    return p.roofline(op, sizes)


@prices(MLA)
def _mla(p: Pricer, op: MLA, sizes) -> Price:
    b, q, kv = _attention_sizes(op, sizes)
    if b <= 0 or q <= 0:
        return Price(0.0, "exact", "empty")
    kvd = p.quant.kv_dtype
    if op.phase == "generation" and q == 1:
        key = ("gen_mla", b, kv - 1, op.heads, kvd, op.qk_rope_head_dim, op.kv_lora_rank)
        return p._query(key, p.db.generation_mla, b, max(kv - 1, 1), op.heads, kvd, "bf16",
                        op.qk_rope_head_dim, op.kv_lora_rank)
    if op.phase == "context" and kv == q:
        key = ("ctx_mla", b, q, op.heads, kvd, op.qk_nope_head_dim, op.qk_rope_head_dim, op.v_head_dim)
        return p._query(key, p.db.context_mla, b, q, op.heads, kvd, "bf16", op.qk_nope_head_dim,
                        op.qk_rope_head_dim, op.v_head_dim, op.kv_lora_rank)
    return p.roofline(op, sizes)


@prices(MoE)
def _moe(p: Pricer, op: MoE, sizes) -> Price:
    t = _int(_ev(op.tokens, sizes))
    if t <= 0:
        return Price(0.0, "exact", "empty")
    tp, ep = getattr(op, "tp", 1), getattr(op, "ep", 1)
    q = "bf16" if p._is_excluded(op.module) else p.moe_quant
    key = ("moe", t, op.hidden, op.inter, op.topk, op.experts, tp, ep, q, op.gated)
    dtype = FORMAT_ALIASES.get(q, q)
    family = (ep > 1 and p.moe_kernels.get(dtype + EP_SUFFIX)) or p.moe_kernels.get(dtype)
    return p._query(key, p.db.moe, t, op.hidden, op.inter, op.topk, op.experts, tp, ep, q, None, op.gated,
                    family=family)


def fold_gdn_convs(ops: list) -> list:
    """Mark the depthwise convs that sit in the same block as a delta-rule Scan (priced with it by db.gdn)."""
    from costmodel.parallel import block_of
    blocks = {(op.layer_kind, block_of(op.module)) for op in ops if isinstance(op, Scan) and op.variant == "delta"}
    out = []
    for op in ops:
        if type(op) is Conv and op.groups == op.channels and (op.layer_kind, block_of(op.module)) in blocks:
            op = ConvInGdn(**{k: getattr(op, k) for k in op.__dataclass_fields__})
        out.append(op)
    return out


@prices(ConvInGdn)
def _conv_in_gdn(p: Pricer, op: ConvInGdn, sizes) -> Price:
    return Price(0.0, "exact", "in the gated delta-net's gdn_perf price")


@prices(Conv)
def _conv(p: Pricer, op: Conv, sizes) -> Price:
    b, length = _int(_ev(op.batch, sizes)), _int(_ev(op.length, sizes))
    if b <= 0 or length <= 0:
        return Price(0.0, "exact", "empty")
    if op.groups == op.channels == op.out_channels:
        # a conv over a fixed window that does not grow with the new tokens S is the decode-step state update
        # (HF convolves the cached kernel + 1 columns; engines run conv1d_update on the one new token)
        if _updates_state(op.length):
            phase, length = "generation", 1
        else:
            phase = "context"
        key = ("conv1d", phase, b, length, op.channels, op.kernel)
        return p._query(key, p.db.causal_conv1d, phase, b, length, op.channels, op.kernel)
    return p.roofline(op, sizes)


def _updates_state(length_expr: str) -> bool:
    from core.expr import free_symbols
    return "S" not in free_symbols(str(length_expr))


@prices(Scan)
def _scan(p: Pricer, op: Scan, sizes) -> Price:
    """Scan fields as the matcher fills them: heads, head_dim (value / x dim per head) and state (the per-head state
    width: d_state of an SSM, the key dim of a delta rule)."""
    b, length = _int(_ev(op.batch, sizes)), _int(_ev(op.length, sizes))
    if b <= 0 or length <= 0:
        return Price(0.0, "exact", "empty")
    phase = "generation" if length == 1 else "context"
    if op.variant == "delta":
        key = ("gdn", phase, b, length, op.heads, op.state, op.head_dim)
        return p._query(key, p.db.gdn, phase, b, length, op.heads, op.heads, op.state, op.head_dim)
    if op.variant == "ssm":
        key = ("ssm", phase, b, length, op.heads, op.head_dim, op.state)
        return p._query(key, p.db.ssm_scan, phase, b, length, op.heads, op.head_dim, op.state)
    return p.roofline(op, sizes)


@prices(Comm)
def _comm(p: Pricer, op: Comm, sizes) -> Price:
    size = op.bytes(sizes)
    if size <= 0 or op.num_gpus <= 1:
        return Price(0.0, "exact", "empty")
    if op.collective == "p2p":
        return p._query(("p2p", size, op.cross_node), p.db.p2p, size, op.cross_node)
    if op.collective == "all_reduce" and p.use_custom_allreduce() and op.num_gpus <= p.db.system.scale_up_domain_gpus:
        return p._query(("custom_ar", size, op.num_gpus), p.db.custom_allreduce, size, op.num_gpus)
    return p._query(("nccl", op.collective, size, op.num_gpus), p.db.nccl, op.collective, size, op.num_gpus)


def _own_kernel(op) -> bool:
    if isinstance(op, MemoryBound):
        return bool(KERNEL_OF_ITS_OWN.intersection(op.what.split("+")))
    return isinstance(op, Embedding)


@prices(Unsupported)
def _unsupported(p: Pricer, op, sizes) -> Price:
    """An op no pattern recognised: measured where the collector replayed it at these shapes and constant arguments
    (`tracecost collect --cases`, aten_perf tables), else roofline."""
    shapes = tuple(tuple(int(_ev(d, sizes)) for d in shape) for shape in op.shapes)
    key = ("aten", op.op, shapes, repr(op.consts))
    if key not in p._cache:
        p._cache[key] = p.db.aten(op.op, shapes, op.consts)
    return p._cache[key] or _kernel(p, op, sizes)


@prices(Embedding)
@prices(MemoryBound)
def _kernel(p: Pricer, op, sizes) -> Price:
    """Norms and activations from elementwise_perf where a row of their kind fits their bytes (the first label of a
    fused group names the kernel); else, as every other memory-bound op, roofline with a launch floor for ops
    engines run as kernels of their own."""
    kinds = ELEMENTWISE_KERNELS.get(op.what.split("+")[0]) if isinstance(op, MemoryBound) else None
    if kinds:
        nbytes = op.bytes(sizes)
        key = ("elementwise", kinds, nbytes)
        if key not in p._cache:
            p._cache[key] = p.db.elementwise(kinds, nbytes) if nbytes > 0 else None
        if p._cache[key] is not None:
            return p._cache[key]
    price = p.roofline(op, sizes)
    if price.latency_ms < MIN_KERNEL_MS and _own_kernel(op):
        return Price(MIN_KERNEL_MS, price.provenance, price.source)
    return price
