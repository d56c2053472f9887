"""Weight-map pieces: the parts of a family's weight map that every family shares, written once.

A weight map names lmscope's *storage* parameters (`model.named_parameters()`:
`blocks.0.attn.q_weight`, `blocks.0.mlp.in_weight`, `unembed.weight`, ...), which hold the
weights in the checkpoints' own `nn.Linear` layout [out, in]. Each gets its source: a checkpoint
tensor name, loaded as it is (a safetensors tensor is adopted without a copy), or
`(transform, name, ...)` for the real rewrites of `lmscope.loading.transforms` (a slice of a fused
projection, a Conv1D transpose, Gemma's `1 + w`), which also know their inverse, so export reads
the same table backwards. Module paths here are given without a trailing dot.

Example:
    >>> m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm")
    >>> for ours, theirs in layers(cfg, "model.layers"):
    ...     m |= norms(ours, f"{theirs}.input_layernorm", f"{theirs}.post_attention_layernorm")
    ...     m |= llama_attention(f"{ours}.attn", f"{theirs}.self_attn")
    ...     m |= gated_mlp(f"{ours}.mlp", f"{theirs}.mlp")
    >>> m["blocks.0.attn.q_weight"]
    'model.layers.0.self_attn.q_proj.weight'
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lmscope.loading.transforms import Chain, FusedHeads, Part, Scale, Transform, Transpose

Source = str | tuple  # "name", or (Transform, "name", ...)
WeightMap = dict[str, Source]

TRANSPOSE = Transpose()

# Each projection's storage parameters: (weight, bias).
ATTENTION = {"q": ("q_weight", "q_bias"), "k": ("k_weight", "k_bias"), "v": ("v_weight", "v_bias")}
ATTENTION_OUT = ("o_weight", "b_O")
MLP = {
    "gate": ("gate_weight", "gate_bias"),
    "in": ("in_weight", "in_bias"),
    "out": ("out_weight", "b_out"),
}

# A storage parameter's TransformerLens view (`named_weights`), to name weights as users know them.
_VIEWS = {
    "q_weight": "W_Q",
    "k_weight": "W_K",
    "v_weight": "W_V",
    "o_weight": "W_O",
    "q_bias": "b_Q",
    "k_bias": "b_K",
    "v_bias": "b_V",
    "in_weight": "W_in",
    "in_bias": "b_in",
    "gate_weight": "W_gate",
    "gate_bias": "b_gate",
    "out_weight": "W_out",
    "router_weight": "W_gate",
    "router_bias": "b_gate",
    "shared_expert_gate": "W_shared_expert_gate",
}


def view_name(name: str) -> str:
    """The TransformerLens name of the weight a storage parameter holds (the name itself for
    parameters that are their own view: `embed.W_E`, `blocks.0.attn.b_O`, norms).

    Example:
        >>> view_name("blocks.0.attn.q_bias"), view_name("unembed.weight")
        ('blocks.0.attn.b_Q', 'unembed.W_U')
    """
    if name == "unembed.weight":
        return "unembed.W_U"
    module, _, leaf = name.rpartition(".")
    return f"{module}.{_VIEWS[leaf]}" if leaf in _VIEWS else name


def source(name: str, transform: Transform | None = None) -> Source:
    """A weight-map source: the tensor `name`, through `transform` when one is given.

    Example:
        >>> source("transformer.h.0.mlp.c_fc.weight", TRANSPOSE)
        (Transpose(), 'transformer.h.0.mlp.c_fc.weight')
    """
    return name if transform is None else (transform, name)


def source_names(source: Source) -> list[str]:
    """The checkpoint tensor names a weight-map source reads.

    Example:
        >>> source_names((TRANSPOSE, "transformer.h.0.mlp.c_fc.weight"))
        ['transformer.h.0.mlp.c_fc.weight']
    """
    return [source] if isinstance(source, str) else list(source[1:])


def layers(cfg: Any, theirs: str) -> Iterator[tuple[str, str]]:
    """(our block, the checkpoint's block) for every layer: ("blocks.0", "model.layers.0"), ...

    Example:
        >>> next(layers(cfg, "transformer.h"))
        ('blocks.0', 'transformer.h.0')
    """
    for layer in range(cfg.n_layers):
        yield f"blocks.{layer}", f"{theirs}.{layer}"


def linear(
    weight: str, bias: str, theirs: str, *, with_bias: bool = True, conv1d: bool = False
) -> WeightMap:
    """An nn.Linear `theirs` (`.weight` [out, in], `.bias`) into our `weight` and `bias`; with
    `conv1d`, a GPT-2 Conv1D, whose weight is stored [in, out] (transposed: a view).

    Example:
        >>> linear("blocks.0.mlp.in_weight", "blocks.0.mlp.in_bias", "model.layers.0.mlp.fc1")
        {'blocks.0.mlp.in_weight': 'model.layers.0.mlp.fc1.weight', 'blocks.0.mlp.in_bias': ...}
    """
    m: WeightMap = {weight: source(f"{theirs}.weight", TRANSPOSE if conv1d else None)}
    if with_bias:
        m[bias] = f"{theirs}.bias"
    return m


def embeddings(
    cfg: Any,
    embed: str,
    head: str = "lm_head.weight",
    *,
    positions: Source | None = None,
    head_bias: str | None = None,
    scale: Transform | None = None,
) -> WeightMap:
    """Token embedding `embed` (through `scale`, if any), learned `positions` (if any) and the
    unembedding: the output head `head`, or with tied embeddings the (unscaled) embedding matrix
    itself, both [d_vocab, d_model] as stored.

    Example:
        >>> embeddings(cfg, "transformer.wte.weight", positions="transformer.wpe.weight")
        {'embed.W_E': 'transformer.wte.weight', 'unembed.weight': 'transformer.wte.weight', ...}
    """
    m: WeightMap = {
        "embed.W_E": source(embed, scale),
        "unembed.weight": embed if cfg.tie_word_embeddings else head,
    }
    if positions is not None:
        m["pos_embed.W_pos"] = positions
    if head_bias is not None:
        m["unembed.b_U"] = head_bias
    return m


def norm(
    ours: str, theirs: str, *, bias: bool = False, transform: Transform | None = None
) -> WeightMap:
    """A norm's `theirs.weight` (through `transform`: Nemotron's `1 + w`) and, with `bias`, its
    `theirs.bias` into our `ours.w` / `ours.b`.

    Example:
        >>> norm("ln_final", "transformer.ln_f", bias=True)
        {'ln_final.w': 'transformer.ln_f.weight', 'ln_final.b': 'transformer.ln_f.bias'}
    """
    m: WeightMap = {f"{ours}.w": source(f"{theirs}.weight", transform)}
    if bias:
        m[f"{ours}.b"] = f"{theirs}.bias"
    return m


def norms(
    block: str, ln1: str, ln2: str, *, bias: bool = False, transform: Transform | None = None
) -> WeightMap:
    """A block's two norms: `ln1` before attention, `ln2` before the MLP (the same module twice
    where one norm feeds both branches, as in GPT-J and Phi).

    Example:
        >>> norms("blocks.0", "model.layers.0.input_layernorm", "model.layers.0.input_layernorm")
        {'blocks.0.ln1.w': 'model.layers.0.input_layernorm.weight', 'blocks.0.ln2.w': ...}
    """
    return norm(f"{block}.ln1", ln1, bias=bias, transform=transform) | norm(
        f"{block}.ln2", ln2, bias=bias, transform=transform
    )


def attention(
    ours: str,
    q: str,
    k: str,
    v: str,
    o: str,
    *,
    qkv_bias: bool = False,
    o_bias: bool = False,
    conv1d: bool = False,
) -> WeightMap:
    """Attention with its own q, k, v and output projections (module names).

    Example:
        >>> attention("blocks.0.attn", *(f"h.0.attn.{p}_proj" for p in "qkv"), "h.0.attn.out_proj")
        {'blocks.0.attn.q_weight': 'h.0.attn.q_proj.weight', ...}
    """
    m: WeightMap = {}
    for part, theirs in zip("qkv", (q, k, v), strict=True):
        weight, bias = ATTENTION[part]
        m |= linear(f"{ours}.{weight}", f"{ours}.{bias}", theirs, with_bias=qkv_bias, conv1d=conv1d)
    return m | attention_out(ours, o, bias=o_bias, conv1d=conv1d)


def attention_out(ours: str, theirs: str, *, bias: bool = True, conv1d: bool = False) -> WeightMap:
    """The attention's output projection `theirs` (d_head * n_heads -> d_model).

    Example:
        >>> attention_out("blocks.0.attn", "transformer.h.0.attn.c_proj", conv1d=True)
        {'blocks.0.attn.o_weight': (Transpose(), ...), 'blocks.0.attn.b_O': ...}
    """
    weight, bias_name = ATTENTION_OUT
    return linear(f"{ours}.{weight}", f"{ours}.{bias_name}", theirs, with_bias=bias, conv1d=conv1d)


def llama_attention(
    ours: str,
    theirs: str,
    *,
    qkv_bias: bool = False,
    o_bias: bool = False,
    qk_norm: bool = False,
    o_proj: str = "o_proj",
) -> WeightMap:
    """Llama-style attention `theirs`: `q_proj`, `k_proj`, `v_proj` and `o_proj` (Phi: `dense`),
    and with `qk_norm` its `q_norm` / `k_norm` weights.

    Example:
        >>> llama_attention("blocks.0.attn", "model.layers.0.self_attn")["blocks.0.attn.k_weight"]
        'model.layers.0.self_attn.k_proj.weight'
    """
    m = attention(
        ours,
        *(f"{theirs}.{p}_proj" for p in "qkv"),
        f"{theirs}.{o_proj}",
        qkv_bias=qkv_bias,
        o_bias=o_bias,
    )
    if qk_norm:
        m |= norm(f"{ours}.q_norm", f"{theirs}.q_norm")
        m |= norm(f"{ours}.k_norm", f"{theirs}.k_norm")
    return m


def fused_qkv(
    ours: str, theirs: str, sizes: tuple[int, int, int], *, bias: bool = True, conv1d: bool = False
) -> WeightMap:
    """q, k and v stacked [q | k | v] in one projection `theirs`, `sizes` outputs each: row blocks
    of an nn.Linear weight, or column blocks of a Conv1D one (transposed). Both are views, so a
    safetensors checkpoint is adopted without a copy.

    Example:
        >>> fused_qkv("blocks.0.attn", "model.layers.0.self_attn.qkv_proj", (64, 16, 16))
        {'blocks.0.attn.q_weight': (Part(dim=0, start=0, stop=64, size=96), ...), ...}
    """
    total, start, m = sum(sizes), 0, {}
    for part, size in zip("qkv", sizes, strict=True):
        weight, bias_name = ATTENTION[part]
        rows = Part(0, start, start + size, total)
        cut = Chain((Part(1, start, start + size, total), TRANSPOSE)) if conv1d else rows
        m[f"{ours}.{weight}"] = (cut, f"{theirs}.weight")
        if bias:
            m[f"{ours}.{bias_name}"] = (rows, f"{theirs}.bias")
        start += size
    return m


def fused_qkv_per_head(ours: str, theirs: str, n_heads: int, *, bias: bool = True) -> WeightMap:
    """q, k and v fused per head, rows laid out [head, (q|k|v), d_head] (GPT-NeoX, BLOOM).

    Example:
        >>> fused_qkv_per_head("blocks.0.attn", "gpt_neox.layers.0.attention.query_key_value", 8)
        {'blocks.0.attn.q_weight': (FusedHeads(n_heads=8, index=0, n_parts=3), ...), ...}
    """
    m: WeightMap = {}
    for index, part in enumerate("qkv"):
        weight, bias_name = ATTENTION[part]
        m[f"{ours}.{weight}"] = (FusedHeads(n_heads, index), f"{theirs}.weight")
        if bias:
            m[f"{ours}.{bias_name}"] = (FusedHeads(n_heads, index), f"{theirs}.bias")
    return m


def linear_mlp(
    ours: str, fc_in: str, fc_out: str, *, bias: bool = True, conv1d: bool = False
) -> WeightMap:
    """A plain MLP: `fc_in` (d_model -> d_mlp) and `fc_out` (d_mlp -> d_model) modules.

    Example:
        >>> linear_mlp("blocks.0.mlp", "model.layers.0.mlp.fc1", "model.layers.0.mlp.fc2")
        {'blocks.0.mlp.in_weight': 'model.layers.0.mlp.fc1.weight', ...}
    """
    (w_in, b_in), (w_out, b_out) = MLP["in"], MLP["out"]
    return linear(
        f"{ours}.{w_in}", f"{ours}.{b_in}", fc_in, with_bias=bias, conv1d=conv1d
    ) | linear(f"{ours}.{w_out}", f"{ours}.{b_out}", fc_out, with_bias=bias, conv1d=conv1d)


def gated_mlp(
    ours: str,
    theirs: str,
    *,
    bias: bool = False,
    names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
) -> WeightMap:
    """A gated MLP `theirs` with its gate, up and down projections `names` (Mixtral: w1, w3, w2).

    Example:
        >>> gated_mlp("blocks.0.mlp", "model.layers.0.mlp")["blocks.0.mlp.gate_weight"]
        'model.layers.0.mlp.gate_proj.weight'
    """
    m: WeightMap = {}
    for role, name in zip(("gate", "in", "out"), names, strict=True):
        weight, bias_name = MLP[role]
        m |= linear(f"{ours}.{weight}", f"{ours}.{bias_name}", f"{theirs}.{name}", with_bias=bias)
    return m


def experts(
    ours: str,
    router: str,
    theirs: str,
    n_experts: int,
    *,
    names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
) -> WeightMap:
    """A mixture of experts: the `router` module (no bias) and the gated MLPs `theirs.{e}`.

    Example:
        >>> experts("blocks.0.mlp", "model.layers.0.mlp.gate", "model.layers.0.mlp.experts", 8)
        {'blocks.0.mlp.router_weight': 'model.layers.0.mlp.gate.weight', ...}
    """
    m: WeightMap = {f"{ours}.router_weight": f"{router}.weight"}
    for e in range(n_experts):
        m |= gated_mlp(f"{ours}.experts.{e}", f"{theirs}.{e}", names=names)
    return m


def fused_gated_mlp(
    ours: str, gate_up: str, down: str, d_mlp: int, *lead: Transform, out_scale: float = 1.0
) -> WeightMap:
    """A gated MLP stored as `gate_up` [2 d_mlp, d_model] ([gate | up] rows) and `down`
    [d_model, d_mlp], each read through the view steps `lead` first (one expert's slice of a
    fused [experts, ...] tensor: `Index(e, n)`); `down` times `out_scale` unless it is 1
    (Granite's residual multiplier).

    Example:
        >>> m = fused_gated_mlp("blocks.0.moe.experts.3", "model.layers.0.experts.gate_up_proj",
        ...                     "model.layers.0.experts.down_proj", 20, Index(3, 8))
        >>> m["blocks.0.moe.experts.3.in_weight"][0].steps[1]   # rows 20:40 of expert 3's slice
        Part(dim=0, start=20, stop=40, size=40)
    """
    m: WeightMap = {}
    for i, role in enumerate(("gate", "in")):
        part = Part(0, i * d_mlp, (i + 1) * d_mlp, 2 * d_mlp)
        m[f"{ours}.{MLP[role][0]}"] = (Chain((*lead, part)), gate_up)
    scale = (Scale(out_scale),) if out_scale != 1.0 else ()
    out: Source = down
    if lead:
        out = (Chain((*lead, *scale)), down)
    elif scale:
        out = (scale[0], down)
    m[f"{ours}.{MLP['out'][0]}"] = out
    return m
