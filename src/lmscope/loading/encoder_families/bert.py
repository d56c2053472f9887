"""BERT, RoBERTa and DistilBERT: post-LN encoders with learned positions (HookedEncoder).

- BERT (BertModel, BertForMaskedLM, BertForPreTraining; sentence-transformers checkpoints are
  BertModel): token type embeddings (`type_vocab_size`), a pooler when the checkpoint has one,
  the MLM head's transform (dense, `hidden_act`, LayerNorm) and a decoder tied to the word
  embeddings (or its own with `tie_word_embeddings: false`), the NSP head of BertForPreTraining.
- RoBERTa: BERT's layers; positions count from `pad_token_id` + 1 over non-padding tokens; one
  token type; the MLM head (`lm_head`) always uses GELU.
- DistilBERT: no token types and no pooler; q_lin / k_lin / v_lin / out_lin, sa_layer_norm,
  ffn.lin1 / lin2, output_layer_norm; LayerNorm eps is 1e-12 throughout; `activation` is the
  MLP's and the MLM transform's.
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.encoder_families import ENCODER
from lmscope.loading.families import Family, WeightMap, heads_bias, heads_in, heads_out, transpose

MODEL = ENCODER

_MLM = ("BertForMaskedLM", "BertForPreTraining")


def _refuse(hf: dict[str, Any], key: str, allowed: tuple[Any, ...], why: str) -> None:
    if hf.get(key, allowed[0]) not in allowed:
        raise ValueError(f"{key}={hf[key]!r}: {why}; lmscope's HookedEncoder does not implement it")


def _bert_like_config(hf: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Fields shared by BERT and RoBERTa configs (`hidden_size` school)."""
    _refuse(hf, "is_decoder", (False,), "a causal BERT decoder")
    _refuse(hf, "add_cross_attention", (False,), "cross-attention layers")
    _refuse(hf, "position_embedding_type", ("absolute", None), "relative position embeddings")
    arch = (hf.get("architectures") or [f"{prefix}Model"])[0]
    return dict(
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        act_fn=hf.get("hidden_act", "gelu"),
        eps=hf.get("layer_norm_eps", 1e-12),
        n_token_types=hf.get("type_vocab_size", 2),
        norm_placement="post_residual",
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        has_mlm_head=arch.endswith(("ForMaskedLM", "ForPreTraining")),
        has_pooler=arch.endswith(("Model", "ForPreTraining")),
        has_nsp_head=arch.endswith("ForPreTraining"),
    )


def bert_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = _bert_like_config(hf, "Bert")
    fields["mlm_act_fn"] = fields["act_fn"]  # BertPredictionHeadTransform uses hidden_act
    return fields


def roberta_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = _bert_like_config(hf, "Roberta")
    fields["position_padding_idx"] = hf.get("pad_token_id", 1)
    fields["mlm_act_fn"] = "gelu"  # RobertaLMHead applies gelu whatever hidden_act says
    return fields


def distilbert_config(hf: dict[str, Any]) -> dict[str, Any]:
    arch = (hf.get("architectures") or ["DistilBertModel"])[0]
    act = hf.get("activation", "gelu")
    return dict(
        d_model=hf["dim"],
        n_layers=hf["n_layers"],
        n_heads=hf["n_heads"],
        d_mlp=hf["hidden_dim"],
        d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        act_fn=act,
        mlm_act_fn=act,
        eps=1e-12,
        n_token_types=0,
        norm_placement="post_residual",
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        has_mlm_head=arch.endswith("ForMaskedLM"),
        has_pooler=False,
        has_nsp_head=False,
    )


def _attention(m: WeightMap, cfg: HookedTransformerConfig, ours: str, q: str, k: str, v: str,
               o: str) -> None:  # fmt: skip
    nh = cfg.n_heads
    for name, theirs in (("Q", q), ("K", k), ("V", v)):
        m[f"{ours}attn.W_{name}"] = (heads_in(nh), f"{theirs}.weight")
        m[f"{ours}attn.b_{name}"] = (heads_bias(nh), f"{theirs}.bias")
    m[f"{ours}attn.W_O"] = (heads_out(nh), f"{o}.weight")
    m[f"{ours}attn.b_O"] = f"{o}.bias"


def _dense(m: WeightMap, ours: str, theirs: str, w: str = "W", b: str = "b") -> None:
    m[f"{ours}.{w}"] = (transpose, f"{theirs}.weight")
    m[f"{ours}.{b}"] = f"{theirs}.bias"


def _norm(m: WeightMap, ours: str, theirs: str) -> None:
    m[f"{ours}.w"] = f"{theirs}.weight"
    m[f"{ours}.b"] = f"{theirs}.bias"


def _embeddings(m: WeightMap, cfg: Any, base: str) -> None:
    m["embed.embed.W_E"] = f"{base}.embeddings.word_embeddings.weight"
    m["embed.pos_embed.W_pos"] = f"{base}.embeddings.position_embeddings.weight"
    if cfg.n_token_types:
        m["embed.token_type_embed.W_token_type"] = f"{base}.embeddings.token_type_embeddings.weight"
    _norm(m, "embed.ln", f"{base}.embeddings.LayerNorm")


def _bert_layers(m: WeightMap, cfg: Any, base: str) -> None:
    for layer in range(cfg.n_layers):
        h, b = f"{base}.encoder.layer.{layer}.", f"blocks.{layer}."
        s = f"{h}attention.self."
        _attention(m, cfg, b, f"{s}query", f"{s}key", f"{s}value", f"{h}attention.output.dense")
        _norm(m, f"{b}ln1", f"{h}attention.output.LayerNorm")
        _dense(m, f"{b}mlp", f"{h}intermediate.dense", "W_in", "b_in")
        _dense(m, f"{b}mlp", f"{h}output.dense", "W_out", "b_out")
        _norm(m, f"{b}ln2", f"{h}output.LayerNorm")


def _unembed(m: WeightMap, cfg: Any, tied: str, own: str, bias: str) -> None:
    m["unembed.W_U"] = (transpose, tied if cfg.tie_word_embeddings else own)
    m["unembed.b_U"] = bias


def bert_weight_map(cfg: Any, hf: dict[str, Any]) -> WeightMap:
    m: WeightMap = {}
    _embeddings(m, cfg, "bert")
    _bert_layers(m, cfg, "bert")
    if cfg.has_pooler:
        _dense(m, "pooler", "bert.pooler.dense")
    if cfg.has_mlm_head:
        p = "cls.predictions."
        _dense(m, "mlm_head", f"{p}transform.dense")
        _norm(m, "mlm_head.ln", f"{p}transform.LayerNorm")
        _unembed(m, cfg, "bert.embeddings.word_embeddings.weight", f"{p}decoder.weight", f"{p}bias")
    if cfg.has_nsp_head:
        _dense(m, "nsp_head", "cls.seq_relationship")
    return m


def roberta_weight_map(cfg: Any, hf: dict[str, Any]) -> WeightMap:
    m: WeightMap = {}
    _embeddings(m, cfg, "roberta")
    _bert_layers(m, cfg, "roberta")
    if cfg.has_pooler:
        _dense(m, "pooler", "roberta.pooler.dense")
    if cfg.has_mlm_head:
        _dense(m, "mlm_head", "lm_head.dense")
        _norm(m, "mlm_head.ln", "lm_head.layer_norm")
        embedding = "roberta.embeddings.word_embeddings.weight"
        _unembed(m, cfg, embedding, "lm_head.decoder.weight", "lm_head.bias")
    return m


def distilbert_weight_map(cfg: Any, hf: dict[str, Any]) -> WeightMap:
    m: WeightMap = {}
    _embeddings(m, cfg, "distilbert")
    for layer in range(cfg.n_layers):
        h, b = f"distilbert.transformer.layer.{layer}.", f"blocks.{layer}."
        a = f"{h}attention."
        _attention(m, cfg, b, f"{a}q_lin", f"{a}k_lin", f"{a}v_lin", f"{a}out_lin")
        _norm(m, f"{b}ln1", f"{h}sa_layer_norm")
        _dense(m, f"{b}mlp", f"{h}ffn.lin1", "W_in", "b_in")
        _dense(m, f"{b}mlp", f"{h}ffn.lin2", "W_out", "b_out")
        _norm(m, f"{b}ln2", f"{h}output_layer_norm")
    if cfg.has_mlm_head:
        _dense(m, "mlm_head", "vocab_transform")
        _norm(m, "mlm_head.ln", "vocab_layer_norm")
        embedding = "distilbert.embeddings.word_embeddings.weight"
        _unembed(m, cfg, embedding, "vocab_projector.weight", "vocab_projector.bias")
    return m


_BERT_KEYS = frozenset(
    {
        "add_cross_attention",
        "hidden_act",
        "hidden_size",
        "intermediate_size",
        "is_decoder",
        "layer_norm_eps",
        "max_position_embeddings",
        "num_attention_heads",
        "num_hidden_layers",
        "position_embedding_type",
        "tie_word_embeddings",
        "type_vocab_size",
        "vocab_size",
    }
)
_DISTILBERT_KEYS = frozenset(
    {
        "activation",
        "dim",
        "hidden_dim",
        "max_position_embeddings",
        "n_heads",
        "n_layers",
        "tie_word_embeddings",
        "vocab_size",
    }
)
# Settings of training and of heads lmscope does not load (classifiers, QA spans).
_IGNORED = frozenset({"gradient_checkpointing", "qa_dropout", "seq_classif_dropout"})

# family -> (its own output head, the embedding a tied model reads instead)
OUTPUT_HEADS = {
    "bert": ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
    "roberta": ("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),
    "distilbert": ("vocab_projector.weight", "distilbert.embeddings.word_embeddings.weight"),
}
FAMILIES = [
    Family(
        "bert",
        ("BertModel", *_MLM),
        bert_config,
        bert_weight_map,
        _BERT_KEYS,
        _IGNORED,
    ),
    Family(
        "roberta",
        ("RobertaModel", "RobertaForMaskedLM"),
        roberta_config,
        roberta_weight_map,
        _BERT_KEYS | {"pad_token_id"},
        _IGNORED,
    ),
    Family(
        "distilbert",
        ("DistilBertModel", "DistilBertForMaskedLM"),
        distilbert_config,
        distilbert_weight_map,
        _DISTILBERT_KEYS,
        _IGNORED,
    ),
]
