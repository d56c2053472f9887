"""Every family refuses HF config attributes that change the computation and that it does not
implement (compared with the HF config class's defaults), and accepts every config it does
implement: the tiny family specs and the bundled hub configs (the embedded GGUF files' configs
are checked by every load in tests/test_real_model*.py)."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import (
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from lmscope import HookedTransformer
from lmscope.config import HookedTransformerConfig
from lmscope.errors import CheckpointError
from lmscope.loading import families
from lmscope.loading.encoder_families import encoder_family_for
from lmscope.loading.families import PARTIAL_ROTARY_KEYS, family_for
from tests._families import FAMILY_SPECS
from tests._tiny import TinyModel, llama_config

CONFIGS = Path(families.__file__).parents[1] / "configs"


def _as_saved(config: Any, model_cls: type) -> dict[str, Any]:
    """The config.json `save_pretrained` writes for this config and model class."""
    saved = json.loads(config.to_json_string(use_diff=True))
    return {**saved, "architectures": [model_cls.__name__]}


@functools.cache
def spec_configs() -> dict[str, dict[str, Any]]:
    """config.json of every tiny family spec of the test suite, built without any model."""
    found = {
        "llama_conftest": _as_saved(llama_config(), LlamaForCausalLM),
        "mistral_window": _as_saved(
            MistralConfig(vocab_size=128, hidden_size=64, sliding_window=5), MistralForCausalLM
        ),
    }
    for name, spec in FAMILY_SPECS.items():
        found[name] = _as_saved(spec.config(), spec.model_cls)
    return found


HUB = sorted(p.name for p in CONFIGS.glob("*--*.json"))

# One attribute per family that changes the computation and that the family does not implement:
# (base spec, key, value). Keys of the HF class itself (compared with its default) and keys of
# other architectures (compared with their neutral value), top level and inside rope_parameters.
FLIPS: dict[str, tuple[str, str, Any]] = {
    "gpt2": ("gpt2", "add_cross_attention", True),
    "gpt_neox": ("neox", "attn_logit_softcapping", 30.0),
    "llama": ("llama3", "partial_rotary_factor", 0.5),  # with llama3 rope scaling
    "llama (mistral)": ("mistral_window", "use_qk_norm", True),
    "gpt_neo": ("gpt_neo", "use_qk_norm", True),
    "gptj": ("gptj", "use_qk_norm", True),
    "codegen": ("codegen", "clip_qkv", 8.0),
    "opt": ("opt", "final_logit_softcapping", 30.0),
    "bloom": ("bloom", "embedding_multiplier", 12.0),
    "gpt_bigcode": ("bigcode_mqa", "attn_logit_softcapping", 30.0),
    "mixtral": (
        "mixtral",
        "rope_parameters",
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4, "partial_rotary_factor": 0.5},
    ),
    "qwen2": ("qwen2", "attn_logit_softcapping", 50.0),
    "qwen3": ("qwen3", "logits_scaling", 8.0),
    "qwen2_moe": ("qwen2_moe", "final_logit_softcapping", 30.0),
    "qwen3_moe": ("qwen3_moe", "use_qk_norm", False),  # neutral: must load (see below)
    "gemma": ("gemma", "attn_logit_softcapping", 50.0),
    "gemma2": ("gemma2", "use_qk_norm", True),
    "gemma3_text": ("gemma3", "attn_logit_softcapping", 50.0),
    "phi": ("phi", "clip_qkv", 8.0),
    "phi3": ("phi3", "use_qk_norm", True),
    "olmo": ("olmo", "final_logit_softcapping", 30.0),
    "olmo2": ("olmo2", "residual_multiplier", 0.5),
    "olmoe": ("olmoe", "attn_logit_softcapping", 30.0),
    "stablelm": ("stablelm", "attn_logit_softcapping", 30.0),
    "glm": ("glm", "use_qk_norm", True),
    "glm4": ("glm4", "attn_logit_softcapping", 30.0),
    "glm4_moe": ("glm4_moe", "final_logit_softcapping", 30.0),
    "smollm3": ("smollm3", "attn_logit_softcapping", 30.0),
    "ministral": ("ministral", "attn_logit_softcapping", 30.0),
    "helium": ("helium", "attn_logit_softcapping", 30.0),
    "seed_oss": ("seed_oss", "attn_logit_softcapping", 30.0),
    "arcee": ("arcee", "attn_logit_softcapping", 30.0),
    "ernie4_5": ("ernie4_5", "attn_logit_softcapping", 30.0),
    "exaone4": ("exaone4", "attn_logit_softcapping", 30.0),
    "olmo3": ("olmo3", "attn_logit_softcapping", 30.0),
    "granite": ("granite", "attn_logit_softcapping", 30.0),
    "granitemoe": ("granitemoe", "attn_logit_softcapping", 30.0),
    "granitemoeshared": ("granitemoeshared", "attn_logit_softcapping", 30.0),
    "cohere": ("cohere", "attn_logit_softcapping", 30.0),
    "cohere2": ("cohere2", "attn_logit_softcapping", 30.0),
    "starcoder2": ("starcoder2", "attn_logit_softcapping", 30.0),
    "nemotron": ("nemotron", "attn_logit_softcapping", 30.0),
    "persimmon": ("persimmon", "attn_logit_softcapping", 30.0),
    "gpt_oss": ("gpt_oss", "use_qk_norm", True),
    "deepseek_v2": ("deepseek_v2", "attn_logit_softcapping", 30.0),
    "deepseek_v3": ("deepseek_v3", "use_qk_norm", True),
    "falcon": ("falcon", "use_qk_norm", True),
    "mpt": ("mpt", "use_qk_norm", True),
    "phimoe": ("phimoe", "use_qk_norm", True),
    "llama4_text": ("llama4", "attn_logit_softcapping", 30.0),
    "qwen3_5_text": ("qwen3_5", "attn_logit_softcapping", 30.0),
    "gemma4_text": ("gemma4", "attn_logit_softcapping", 30.0),
    "qwen3_5_moe_text": ("qwen3_5_moe", "attn_logit_softcapping", 30.0),
    "qwen3_next": ("qwen3_next", "attn_logit_softcapping", 30.0),
}
NEUTRAL = {"qwen3_moe"}


@pytest.mark.parametrize("name", sorted(spec_configs()))
def test_every_family_spec_is_accepted(name: str) -> None:
    hf = spec_configs()[name]
    fields = family_for(hf).config_from_hf(hf)
    assert fields["d_model"] == hf.get("hidden_size", hf.get("n_embd", hf.get("d_model")))


@pytest.mark.parametrize("name", HUB)
def test_bundled_hub_configs_are_accepted(name: str) -> None:
    hf = json.loads((CONFIGS / name).read_text())
    found = encoder_family_for(hf)  # an encoder's config goes through its own family
    family = found[0] if found is not None else family_for(hf)
    assert family.config_from_hf(hf)["n_layers"] >= 1


def test_every_family_has_a_flip() -> None:
    """FLIPS covers every family adapter of a Hugging Face architecture. (lmscope's own
    checkpoints store HookedTransformerConfig fields, so there is no HF attribute to flip: an
    unknown field is refused, tested in tests/test_train.py.)"""
    covered = {family_for(spec_configs()[base]).name for base, _, _ in FLIPS.values()}
    assert covered == {fam.name for fam in families._families()} - {"lmscope"}


@pytest.mark.parametrize("case", sorted(FLIPS))
def test_unhandled_attribute_is_refused(case: str) -> None:
    base, key, value = FLIPS[case]
    hf = {**spec_configs()[base], key: value}
    family = family_for(hf)
    if case in NEUTRAL:  # a neutral value of another architecture's key changes nothing
        family.config_from_hf(hf)
        return
    with pytest.raises(ValueError, match="does not implement") as err:
        family.config_from_hf(hf)
    message = str(err.value)
    if isinstance(value, dict):  # named by its entry
        key, value = f"{key}.partial_rotary_factor", value["partial_rotary_factor"]
    assert f"{key}={value!r}" in message, message
    assert f"lmscope's {family.name} adapter" in message


def test_harmless_keys_with_other_values_are_accepted() -> None:
    hf = {
        **spec_configs()["llama_conftest"],
        "initializer_range": 0.5,
        "use_cache": False,
        "attention_dropout": 0.3,
        "pad_token_id": 7,
        "router_aux_loss_coef": 0.5,
        "transformers.js_config": {"dtype": "q4"},  # unknown to LlamaConfig: ignored, as by HF
        # transformers' Llama rotates whole heads whatever this says (without rope scaling)
        "partial_rotary_factor": 0.5,
        "use_qk_norm": False,
    }
    assert family_for(hf).config_from_hf(hf)["d_model"] == hf["hidden_size"]


def test_refusal_through_from_pretrained_names_the_config(
    tiny_llama: TinyModel, tmp_path: Path
) -> None:
    path = shutil.copytree(tiny_llama.path, tmp_path / "model")
    config = json.loads((path / "config.json").read_text())
    config["attn_logit_softcapping"] = 30.0
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json.*attn_logit_softcapping=30\.0"):
        HookedTransformer.from_pretrained(path)


def test_declared_keys_cover_what_the_code_reads() -> None:
    """A key a family's readers look at, on any spec, is one it declares (or a harmless one):
    the declarations are the code's, so a handled key is never refused. The shared rotary
    reader looks at the fraction keys for every family; the checker refuses them where the
    family has no partial rotary."""

    class Recording(dict):
        def __init__(self, data: dict[str, Any], seen: set[str]) -> None:
            super().__init__(data)
            self.seen = seen

        def get(self, key: str, default: Any = None) -> Any:
            self.seen.add(key)
            return super().get(key, default)

        def __getitem__(self, key: str) -> Any:
            self.seen.add(key)
            return super().__getitem__(key)

        def __contains__(self, key: object) -> bool:
            self.seen.add(str(key))
            return super().__contains__(key)

    for name, hf in spec_configs().items():
        family, seen = family_for(hf), set()
        fields = family.read_config(Recording(hf, seen))
        cfg = HookedTransformerConfig(**fields, init_weights=False)
        family.weight_map(cfg, Recording(hf, seen))
        declared = family.config_keys | family.ignored_keys | PARTIAL_ROTARY_KEYS
        undeclared = {k for k in seen if k not in declared and not families._is_harmless(k)}
        assert not undeclared, (name, sorted(undeclared))


def test_hf_defaults_are_kept_per_transformers_version(tmp_path, monkeypatch) -> None:
    """The defaults come from transformers once, then from lmscope's cache (the config classes
    import seconds of transformers)."""
    import transformers

    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    families.hf_config_defaults.cache_clear()
    try:
        first = families.hf_config_defaults("gpt2")
        assert first["n_embd"] == transformers.GPT2Config().n_embd
        (kept,) = (tmp_path / "hf-config-defaults").glob("*/gpt2.json")
        assert kept.parent.name == transformers.__version__
        assert families.hf_config_defaults("no-such-model-type") is None
        families.hf_config_defaults.cache_clear()

        def unavailable(*args, **kwargs):
            raise AssertionError("transformers was asked again")

        monkeypatch.setattr(transformers.AutoConfig, "for_model", unavailable)
        assert families.hf_config_defaults("gpt2") == first
    finally:
        families.hf_config_defaults.cache_clear()


def test_a_quantized_checkpoint_is_refused_naming_the_method() -> None:
    """MXFP4 / FP8 / GPTQ weights are not float weights: the config is refused before loading."""
    hf = {**spec_configs()["gpt_oss"], "quantization_config": {"quant_method": "mxfp4"}}
    with pytest.raises(ValueError, match="quantization_config.*'mxfp4'.*float"):
        family_for(hf).config_from_hf(hf)
