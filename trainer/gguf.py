"""Writing a merged llama-architecture model as one GGUF file, for llama.cpp and Ollama, with the `gguf` package.

What llama.cpp's `convert_hf_to_gguf.py` does for `LlamaForCausalLM`, for the models Tunewright serves: the
hyperparameters under `llama.*`, the tensors under GGUF's names (`gguf.get_tensor_name_map`) with the query and key
projections permuted to GGUF's rotary layout (transformers' GGUF reader permutes them back), 1-D tensors in F32
and the others in F16 or Q8_0. The tokenizer goes in as llama.cpp's `gpt2` (byte-level BPE) vocabulary: every
token with its type (special tokens as CONTROL), the merges, the bos/eos/pad/unk ids, whether a bos is added, the
pre-tokenizer llama.cpp should split with, and the chat template, so llama.cpp and Ollama render a conversation
as the base model's template does (`modeling/registry.py` reads SmolLM2's GGUF through the same keys the other
way round).

A model this cannot write faithfully (another architecture, rope scaling, biases, a tokenizer that is not
byte-level BPE) raises `UnsupportedModelError` with the reason, before anything is written.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

QUANTIZATIONS = ("f16", "q8_0")
"""GGUF tensor types an export may ask for (1-D tensors are F32 in both)."""

GPT2_SPLIT = "gpt-2"
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


class UnsupportedModelError(ValueError):
    """The model cannot be written as GGUF by this writer; the message says why."""


def write_gguf(model: Any, tokenizer: Any, tokenizer_dir: Path, out: Path, *, quantization: str, name: str) -> None:
    """Write ``model`` (a merged, unwrapped transformers model) and its tokenizer to the GGUF file ``out``.

    Args:
        model: A ``LlamaForCausalLM`` with its weights merged (no adapter).
        tokenizer: The base model's (fast) tokenizer, with its chat template.
        tokenizer_dir: The directory it was loaded from (its ``tokenizer.json`` holds the merges).
        out: The file to write.
        quantization: ``f16`` or ``q8_0`` (the 2-D tensors' type).
        name: The model's name (``general.name``).

    Raises:
        UnsupportedModelError: the architecture, its options or the tokenizer cannot be written.
        ValueError: ``quantization`` is not one of `QUANTIZATIONS`.
    """
    import gguf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}")
    config = model.config
    check_architecture(config)
    tokens, types = vocabulary(tokenizer, rows=model.get_input_embeddings().weight.shape[0])
    pre = pre_tokenizer_name(tokenizer_dir)
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        _add_hyperparameters(writer, config, vocab_size=len(tokens))
        file_type = gguf.LlamaFileType.MOSTLY_Q8_0 if quantization == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(writer, tokenizer, tokenizer_dir, tokens, types, pre=pre)
        for gguf_name, data, raw_type in tensors(model, quantization=quantization):
            writer.add_tensor(gguf_name, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def check_architecture(config: Any) -> None:
    """Refuse what this writer does not write faithfully: anything but a plain Llama.

    Raises:
        UnsupportedModelError: another architecture, rope scaling, attention or MLP biases.
    """
    model_type = getattr(config, "model_type", None)
    architectures = getattr(config, "architectures", None) or [model_type]
    if model_type != "llama":
        raise UnsupportedModelError(
            f"GGUF export supports llama-architecture base models (LlamaForCausalLM); this base model is "
            f"{', '.join(str(a) for a in architectures)}"
        )
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedModelError(f"GGUF export does not support rope scaling ({rope.get('rope_type')!r}) yet")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UnsupportedModelError("GGUF export does not support llama models with attention or MLP biases")


def rope_parameters(config: Any) -> dict[str, Any]:
    """The rope settings: transformers 5's ``rope_parameters``, else the older ``rope_theta`` and ``rope_scaling``."""
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict):
        return parameters
    scaling = getattr(config, "rope_scaling", None) or {}
    return {"rope_theta": getattr(config, "rope_theta", 10000.0), "rope_type": scaling.get("rope_type", "default")}


def head_dim(config: Any) -> int:
    """Each attention head's width (``head_dim`` when the config has one, else hidden size over heads)."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _add_hyperparameters(writer: Any, config: Any, *, vocab_size: int) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope_parameters(config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(vocab_size)
    width = head_dim(config)
    writer.add_rope_dimension_count(width)
    if width != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(width)
        writer.add_value_length(width)


def vocabulary(tokenizer: Any, *, rows: int) -> tuple[list[str], list[int]]:
    """Every token of the embedding's ``rows`` with its GGUF type, as llama.cpp's converter lists them.

    Ids the tokenizer does not use (an embedding padded past the vocabulary) become ``[PAD<id>]`` of type UNUSED;
    added tokens are CONTROL when special, USER_DEFINED otherwise; the rest are NORMAL.

    Raises:
        UnsupportedModelError: the tokenizer has ids beyond the embedding.
    """
    import gguf

    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= rows:
        raise UnsupportedModelError(f"the tokenizer has {len(vocab)} tokens but the embedding only {rows} rows")
    by_id = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for index in range(rows):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def pre_tokenizer_name(tokenizer_dir: Path) -> str:
    """The name llama.cpp knows for the tokenizer's pre-tokenizer (``tokenizer.ggml.pre``), read from tokenizer.json.

    Raises:
        UnsupportedModelError: the tokenizer is not byte-level BPE, or splits text in a way llama.cpp would not
            reproduce under one of these names.
    """
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise UnsupportedModelError("GGUF export needs the base model's tokenizer.json (a fast tokenizer)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    if (spec.get("model") or {}).get("type") != "BPE":
        raise UnsupportedModelError("GGUF export supports byte-level BPE tokenizers only")
    steps = _steps(spec.get("pre_tokenizer"))
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return GPT2_SPLIT
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and (steps[0].get("pattern") or {}).get("Regex") == LLAMA3_REGEX:
        return "llama-bpe"
    raise UnsupportedModelError(
        f"GGUF export does not know how llama.cpp should split text for this tokenizer (pre-tokenizer {kinds})"
    )


def _steps(pre_tokenizer: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre_tokenizer:
        return []
    if pre_tokenizer.get("type") == "Sequence":
        return list(pre_tokenizer.get("pretokenizers") or [])
    return [pre_tokenizer]


def _add_tokenizer(
    writer: Any, tokenizer: Any, tokenizer_dir: Path, tokens: list[str], types: list[int], *, pre: str
) -> None:
    """The vocabulary, merges, special token ids, whether bos/eos are added, and the chat template."""
    import gguf

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens))
    if special.chat_template is None and isinstance(tokenizer.chat_template, str):
        special.chat_template = tokenizer.chat_template
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    marked = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    special.add_special_token["bos"] = bos is not None and marked[:1] == [bos] and plain[:1] != [bos]
    special.add_special_token["eos"] = eos is not None and marked[-1:] == [eos] and plain[-1:] != [eos]
    special.add_to_gguf(writer, quiet=True)


def tensors(model: Any, *, quantization: str) -> list[tuple[str, np.ndarray, Any]]:
    """The model's tensors as GGUF names them, converted: ``(name, data, raw type or None)``.

    The tied output projection is left out (GGUF ties it when ``output.weight`` is absent).

    Raises:
        UnsupportedModelError: a tensor has no GGUF name.
    """
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    converted = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UnsupportedModelError(f"GGUF export cannot name the tensor {hf_name}")
        data = tensor.detach().to("cpu").float().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = _permute(data, config.num_attention_heads, config.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = _permute(data, config.num_attention_heads, config.num_key_value_heads)
        converted.append((gguf_name, *_encode(data, quantization)))
    return converted


def _permute(weights: np.ndarray, heads: int, kv_heads: int) -> np.ndarray:
    """GGUF's rotary layout of a query or key projection (llama.cpp's ``LlamaModel.permute``)."""
    if kv_heads != heads:
        heads = kv_heads
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _encode(data: np.ndarray, quantization: str) -> tuple[np.ndarray, Any]:
    """1-D tensors as F32; the others as F16, or Q8_0 where their rows split into Q8_0 blocks (else F16)."""
    import gguf
    import numpy as np

    if data.ndim <= 1:
        return data.astype(np.float32), None
    if quantization == "q8_0":
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        if data.shape[-1] % block == 0:
            kind = gguf.GGMLQuantizationType.Q8_0
            return gguf.quants.quantize(data, kind), kind
    return data.astype(np.float16), None
