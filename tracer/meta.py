"""Build a causal LM on the meta device: no memory, no weights, the model's own transformers code."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass

import torch

from core.errors import UserError

DTYPE = torch.bfloat16  # what serving engines run the reference models in


@contextlib.contextmanager
def quiet():
    """Silence transformers' and torch's chatter during construction and export."""
    loggers = [logging.getLogger(name) for name in ("transformers", "torch")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


class TextLM(torch.nn.Module):
    """A text backbone with a plain LM head, for text models transformers ships without a causal-LM class
    (the text halves of vision-language models). The head is what every causal LM adds: one linear to the
    vocabulary, tied to the input embedding when the config says so."""

    def __init__(self, backbone, config):
        super().__init__()
        self.model = backbone
        self.config = config
        vocab, hidden = config.vocab_size, config.hidden_size
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = backbone.get_input_embeddings().weight

    def forward(self, input_ids, past_key_values=None, use_cache=False, logits_to_keep=0):
        out = self.model(input_ids=input_ids, past_key_values=past_key_values, use_cache=use_cache)
        hidden = out.last_hidden_state[:, -logits_to_keep:, :]
        return TextLMOutput(self.lm_head(hidden), getattr(out, "past_key_values", None))


@dataclass
class TextLMOutput:
    logits: torch.Tensor
    past_key_values: object


def _causal_lm_class(config, trust_remote_code: bool):
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return lambda cfg, **kw: AutoModelForCausalLM.from_config(cfg, dtype=DTYPE, **kw)
    if config.model_type in MODEL_MAPPING_NAMES:
        return lambda cfg, **kw: TextLM(AutoModel.from_config(cfg, dtype=DTYPE, **kw), cfg)
    written_for = _causal_lm_written_for(config)
    if written_for is not None:
        return lambda cfg, **kw: written_for._from_config(cfg, dtype=DTYPE, **kw)
    if trust_remote_code and getattr(config, "auto_map", None):
        return lambda cfg, **kw: AutoModelForCausalLM.from_config(cfg, dtype=DTYPE, trust_remote_code=True, **kw)
    raise UserError(f"model_type '{config.model_type}' has no causal-LM class in transformers")


def _causal_lm_written_for(config):
    """A causal-LM class of transformers' tables that declares this config's class as its config_class, where the
    config's model_type has no table entry of its own (a composite config's decoder sub-config, whose causal-LM
    class is filed under the composite model_type). Looked up beside the config class, in its modeling module."""
    import importlib

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not type(config).__module__.startswith("transformers.models."):
        return None  # remote code runs only through the trust_remote_code path
    try:
        module = importlib.import_module(type(config).__module__.replace(".configuration_", ".modeling_"))
    except ImportError:
        return None
    for name in dict.fromkeys(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        cls = getattr(module, name, None) if isinstance(name, str) else None
        if cls is not None and getattr(cls, "config_class", None) is type(config):
            return cls
    return None


def _global_value(config, field: str, default=None):
    """config.<field>, or `default` where the config refuses a global read (a per-layer field of a heterogeneous
    config raises instead of answering): such a field is set per layer, never None as a whole."""
    try:
        return getattr(config, field, default)
    except Exception:
        return default


def build_meta_model(config, *, trust_remote_code: bool = False) -> torch.nn.Module:
    """Instantiate the model on the meta device, in eval mode.

    SDPA is asked for first: it is the fused attention kernel serving engines run, and export keeps it as one
    node. Models without an SDPA path fall back to their default (eager) attention.
    """
    make = _causal_lm_class(config, trust_remote_code)
    if _global_value(config, "head_dim", 0) is None and isinstance(_global_value(config, "hidden_size"), int) \
            and isinstance(_global_value(config, "num_attention_heads"), int):
        # head_dim None means "hidden / heads"; some model code reads the field without that default
        config.head_dim = config.hidden_size // config.num_attention_heads
    if getattr(config, "is_decoder", None) is False:
        # Encoder families (BERT and kin) run as causal LMs only as decoders: causal masks and a KV cache.
        config.is_decoder = True
    try:
        with quiet(), torch.device("meta"):
            try:
                model = make(config, attn_implementation="sdpa")
            except ValueError as exc:
                if "attention implementation" not in str(exc):
                    raise
                model = make(config, attn_implementation="eager")
    except UserError:
        raise
    except Exception as exc:  # the model's own __init__ rejected the config
        raise UserError(f"transformers could not build {config.model_type}: {one_line(exc)}") from exc
    _uniform_dtype(model)
    return model.eval()


def _uniform_dtype(model) -> None:
    """Parameters made by a legacy constructor (torch.FloatTensor(...)) ignore both the meta device and the dtype
    the model is built in: they are real float32 CPU tensors, and the model's own code then mixes them with DTYPE
    activations on meta (a bf16 x fp32 matmul fails). Loading with dtype=bfloat16 runs such a model in bf16
    throughout: they become meta tensors of DTYPE, except the modules the model declares it keeps in float32
    (_keep_in_fp32_modules[_strict]), which only move to meta."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) \
        | set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    made: dict[int, torch.nn.Parameter] = {}  # one replacement per parameter, so tied weights stay tied
    for prefix, module in model.named_modules(remove_duplicate=False):
        for leaf, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in made:
                dtype = param.dtype
                if param.is_floating_point() and dtype.itemsize > DTYPE.itemsize \
                        and not keep & set(f"{prefix}.{leaf}".split(".")):
                    dtype = DTYPE
                made[id(param)] = param if param.device.type == "meta" and dtype == param.dtype else \
                    torch.nn.Parameter(torch.empty_like(param, device="meta", dtype=dtype),
                                       requires_grad=param.requires_grad)
            module._parameters[leaf] = made[id(param)]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
