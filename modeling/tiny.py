"""A tiny Llama-architecture model built offline, for tests and the offline demo (`tunewright models make-tiny`).

The directory it writes loads through the same ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained``
path as a real model: a byte-level BPE tokenizer trained with ``tokenizers`` on a built-in corpus, a ChatML
chat template, seeded random weights (safetensors) and a generation config. Nothing touches the network.

Like most real templates, the chat template has no ``{% generation %}`` block, so transformers'
``return_assistant_tokens_mask`` gives an all-zero mask here too; the trainer builds its own mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

ENDOFTEXT, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, PAD]
VOCAB_SIZE = 768
MAX_POSITIONS = 512

CHAT_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}
{{- '# Tools\\n\\nYou may call these functions:\\n<tools>' }}
{%- for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}
{{- '\\n</tools>\\nTo call one, reply with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if not (tools and loop.first and message['role'] == 'system') %}
{{- '<|im_start|>' + message['role'] + '\\n' }}
{%- if message['content'] is string %}{{ message['content'] }}
{%- elif message['content'] %}
{%- for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}
{%- endif %}
{%- for call in message.get('tool_calls') or [] %}
{%- set function = call['function'] if call['function'] is defined else call %}
{%- set arguments = function['arguments'] %}
{%- if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}
{{- '<tool_call>{"name": "' + function['name'] + '", "arguments": ' }}
{{- arguments if arguments is string else arguments | tojson }}{{ '}</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
"""

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Answer the question briefly and politely.",
    "What is the capital of France? The capital of France is Paris.",
    "Please write a short summary of the following text in one sentence.",
    "Thank you! I hope this helps. Let me know if you have any other questions.",
    "Training a model on examples teaches it to follow instructions and to answer in a given style.",
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma",
    "One, two, three, four, five, six, seven, eight, nine, ten. 0 1 2 3 4 5 6 7 8 9 10 42 100 2024",
    "The weather today is sunny with a high of 21 degrees and a light wind from the west.",
    '{"role": "user", "content": "Hello, how are you?"}',
    '{"role": "assistant", "content": "I am fine, thank you."}',
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    '{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}',
    '[{"id": "call_1", "type": "function"}, {"temp_c": 18, "ok": true, "items": [1, 2, 3], "next": null}]',
    "<tool_call>\n</tool_call>\n<tools>\n</tools>\n# Tools\n\n",
]


def make_tiny(directory: Path, *, seed: int = 0) -> Path:
    """Build the tiny model into ``directory`` (created if missing) and return it.

    Args:
        directory: Where the model, tokenizer and generation config are written.
        seed: Seed for the random weights; the same seed gives the same weights.

    Returns:
        ``directory``, ready for ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
    )
    # Seed a private copy of the RNG so that building the model leaves the caller's torch RNG alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]], pad_token_id=ids[PAD], bos_token_id=None
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer on the built-in corpus and wrap it for transformers.

    Returns:
        A fast tokenizer with the ChatML template; eos is ``<|im_end|>``, pad ``<|pad|>``.
    """
    from transformers import PreTrainedTokenizerFast

    options: dict[str, Any] = {"clean_up_tokenization_spaces": False, "model_max_length": MAX_POSITIONS}
    return PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(),
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START, ENDOFTEXT],
        chat_template=CHAT_TEMPLATE,
        **options,
    )


def _train_bpe() -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def _corpus() -> list[str]:
    # Repeat with small variations so that common words and JSON punctuation become merges.
    lines = [line for _ in range(3) for line in _CORPUS]
    lines += [f"{role}\n{text}\n" for role in ("system", "user", "assistant", "tool") for text in _CORPUS]
    return lines
