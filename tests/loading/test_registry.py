"""The model registry: aliases resolve, vendored configs read through their adapters, the stored
figures and docs/models.md are current, unknown names get suggestions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import lmscope
from lmscope.loading import MODEL_ALIASES, open_checkpoint
from lmscope.loading import registry as reg
from lmscope.loading.embedded import EMBEDDED_MODELS
from lmscope.loading.encoder_families import encoder_family_for
from lmscope.loading.families import family_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_model_table.py"


@pytest.fixture(scope="module")
def computed() -> list[reg.ModelInfo]:
    return reg.compute_models()


def _script():
    spec = importlib.util.spec_from_file_location("make_model_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- currency (CI check)


def test_docs_models_md_is_current(computed) -> None:
    expected = reg.models_markdown(computed)
    actual = (ROOT / "docs" / "models.md").read_text()
    assert actual == expected, "docs/models.md is stale: run `python scripts/make_model_table.py`"


def test_stored_figures_are_current(computed) -> None:
    assert reg.FIGURES_FILE.read_text() == reg.figures_json(computed), (
        "src/lmscope/loading/configs/figures.json is stale: run `python scripts/make_model_table.py`"
    )
    assert reg.list_models() == computed


def test_script_check_mode(computed, tmp_path, monkeypatch) -> None:
    script = _script()
    monkeypatch.setattr(script, "compute_models", lambda: computed)
    assert script.main(["--check"]) == 0
    stale_table = tmp_path / "models.md"
    stale_table.write_text("old\n")
    monkeypatch.setattr(script, "TABLE", stale_table)
    assert script.main(["--check"]) == 1
    assert stale_table.read_text() == "old\n"  # --check never writes


# --------------------------------------------------------------------------- aliases


def test_every_alias_resolves_to_an_entry() -> None:
    models = lmscope.list_models()
    by_hub = {m.hub_id for m in models if not m.embedded}
    assert set(MODEL_ALIASES.values()) <= by_hub
    for alias, hub_id in MODEL_ALIASES.items():
        assert alias == alias.lower()
        assert reg.get_model_info(alias).hub_id == hub_id
    for m in models:
        if m.embedded:
            assert m.alias in EMBEDDED_MODELS
        else:
            assert MODEL_ALIASES[m.alias] == m.hub_id
            assert all(MODEL_ALIASES[a] == m.hub_id for a in m.aliases)
    assert len({m.alias for m in models}) == len(models)
    assert set(EMBEDDED_MODELS) <= {m.alias for m in models if m.embedded}


def test_issue_aliases_are_registered() -> None:
    wanted = {
        "gpt2": "openai-community/gpt2",
        "gpt2-xl": "openai-community/gpt2-xl",
        "distilgpt2": "distilbert/distilgpt2",
        "pythia-70m": "EleutherAI/pythia-70m",
        "pythia-12b-deduped": "EleutherAI/pythia-12b-deduped",
        "gpt-neo-125m": "EleutherAI/gpt-neo-125m",
        "opt-125m": "facebook/opt-125m",
        "bloom-560m": "bigscience/bloom-560m",
        "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
        "mistral-7b-v0.1": "mistralai/Mistral-7B-v0.1",  # the hub name works too
        "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
        "qwen3-0.6b": "Qwen/Qwen3-0.6B",
        "gemma-2-2b": "google/gemma-2-2b",
        "gemma-3-270m": "google/gemma-3-270m",
        "phi-2": "microsoft/phi-2",
        "olmo-2-0425-1b": "allenai/OLMo-2-0425-1B",
    }
    for alias, hub_id in wanted.items():
        assert MODEL_ALIASES[alias] == hub_id, alias
    # smollm2-135m stays the embedded default, not a hub alias.
    assert "smollm2-135m" not in MODEL_ALIASES and "smollm2-135m" in EMBEDDED_MODELS


def test_alias_lookup_ignores_case() -> None:
    assert reg.get_model_info("Pythia-70M").hub_id == "EleutherAI/pythia-70m"
    assert reg.get_model_info("meta-llama/Llama-3.2-1B").alias == "llama-3.2-1b"
    assert lmscope.list_models("gpt-2")[0].alias == "gpt2"


def test_unknown_names_suggest_close_aliases() -> None:
    with pytest.raises(ValueError, match=r"Did you mean: .*pythia-70m"):
        open_checkpoint("pythia-70")
    with pytest.raises(ValueError, match=r"Did you mean: .*qwen2.5-0.5b"):
        open_checkpoint("qwen-2.5-0.5b")
    with pytest.raises(ValueError, match=r"Did you mean: .*gemma-3-270m-gguf"):
        open_checkpoint("gemma3-270m-gguf")
    with pytest.raises(KeyError, match=r"Did you mean: .*gpt2-medium"):
        reg.get_model_info("gpt2-medum")


# --------------------------------------------------------------------------- vendored configs


def _vendored() -> list[Path]:
    return sorted(reg.CONFIG_DIR.glob("*--*.json"))


@pytest.mark.parametrize("path", _vendored(), ids=lambda p: p.stem)
def test_vendored_config_parses_through_its_family(path: Path) -> None:
    hub_id = path.stem.replace("--", "/", 1)
    assert reg.config_path(hub_id) == path
    assert any(m.hub_id == hub_id for m in lmscope.list_models()), f"{hub_id} has no registry row"
    hf = json.loads(path.read_text())
    assert hf.get("architectures"), "a vendored config names its architecture"
    found = encoder_family_for(hf)  # encoders and encoder-decoders have their own families
    try:
        family = found[0] if found is not None else family_for(hf)
    except ValueError:
        pytest.skip(f"no lmscope family reads {hf['architectures'][0]} yet")
    fields = family.config_from_hf(hf)
    figures = reg.figures_from_config(hf)
    assert figures["n_layers"] == fields["n_layers"] > 0
    assert figures["d_model"] == fields["d_model"] > 0
    assert figures["params"] > 0


def test_every_vendored_config_is_named_in_sources() -> None:
    sources = (reg.CONFIG_DIR / "SOURCES.md").read_text()
    for path in _vendored():
        assert f"`{path.name}`" in sources, f"{path.name} has no source in configs/SOURCES.md"


@pytest.mark.parametrize(
    ("alias", "hub_id"),
    [
        ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("gemma-3-270m-gguf", "google/gemma-3-270m"),
    ],
)
def test_gguf_derived_configs_match_the_reader(alias: str, hub_id: str) -> None:
    vendored = json.loads(reg.config_path(hub_id).read_text())
    assert open_checkpoint(alias).hf_config == vendored


# --------------------------------------------------------------------------- figures


def test_figures_of_known_models(computed) -> None:
    by_alias = {m.alias: m for m in computed}
    gpt2 = by_alias["gpt2"]
    assert (gpt2.n_layers, gpt2.d_model, gpt2.n_heads, gpt2.d_mlp, gpt2.n_ctx) == (
        12,
        768,
        12,
        3072,
        1024,
    )
    assert gpt2.params == 124_439_808  # transformers' count for GPT2LMHeadModel (tied)
    assert (gpt2.act_fn, gpt2.norm, gpt2.positional) == ("gelu_new", "LN", "learned")
    smol = by_alias["smollm2-135m"]
    assert (smol.n_kv_heads, smol.act_fn, smol.gated_mlp, smol.norm) == (3, "silu", True, "RMS")
    assert smol.params == 134_515_008
    assert by_alias["pythia-70m"].source == "model card"
    assert by_alias["pythia-70m"].n_kv_heads is None  # the card does not say: left blank
    assert by_alias["pythia-70m"].params == 70_426_624
    # Parameter counts stated independently of the configs (keras-team/keras-hub,
    # keras_hub/src/models/qwen/qwen_presets.py): our meta-device count agrees.
    assert by_alias["qwen2.5-0.5b"].params == 494_032_768
    assert by_alias["qwen2.5-3b"].params == 3_085_938_688
    assert all(m.complete for m in computed if m.source == "config")
    assert sum(m.complete for m in computed) >= 20


def test_list_models_rows_are_dataclasses() -> None:
    row = lmscope.list_models()[0]
    assert isinstance(row, reg.ModelInfo)
    assert row.to_dict()["alias"] == row.alias
