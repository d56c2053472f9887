"""Draw the model diagrams of docs/diagram.md from the model's own hook table.

    python scripts/make_diagram.py            # writes docs/diagrams/*.svg (run by `make docs`)

For each of two tiny models built from a config (a GPT-2-like one: learned positions, LayerNorm,
GELU; and a Llama-like one: rotary, grouped-query attention with 2 K/V heads, RMSNorm, gated
SiLU MLP), it runs one forward with a recording hook on every entry of `model.hook_dict`, so
the diagram lists exactly the hook points that fire, in the order they fire, with the shapes
they see; then once per opt-in switch (`set_use_attn_result`, `set_use_attn_in`,
`set_use_split_qkv_input`, `set_use_hook_mlp_in`) for the hook points that only fire with it.
Weights are the TransformerLens-layout views (`W_Q`, `b_O`, `W_in`, ...) of each module. Sizes
are chosen distinct (batch 3, pos 5, d_model 32, 4 heads, 2 K/V heads, d_head 8, d_mlp 80,
d_vocab 101, n_ctx 64), so every number maps back to its dimension's name. Nothing is written by
hand: a renamed hook or a changed shape changes the picture.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import torch

from lmscope import HookedTransformer, HookedTransformerConfig
from lmscope.hooks import HookNotEnabledError

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "diagrams"
BATCH, POS = 3, 5
SIZES = dict(n_layers=2, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_mlp=80, d_vocab=101)
MODELS = {
    "gpt2-like": dict(act_fn="gelu_new", normalization_type="LN"),
    "rotary-gqa": dict(
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=8,
        n_key_value_heads=2,
    ),
}
DIM_NAMES = {BATCH: "batch", POS: "pos", 32: "d_model", 4: "head_index", 2: "kv_head",
             8: "d_head", 80: "d_mlp", 101: "d_vocab", 64: "n_ctx", 1: "1"}  # fmt: skip
SWITCHES = (
    "set_use_attn_result",
    "set_use_attn_in",
    "set_use_split_qkv_input",
    "set_use_hook_mlp_in",
)
WEIGHT_PREFIXES = ("W_", "b_")
NORM_WEIGHTS = ("w", "b")


@dataclass
class Hook:
    name: str
    shape: tuple[int, ...]
    switch: str = ""


@dataclass
class Module:
    """One submodule in the order its first hook fires: its hooks and its weights."""

    name: str
    kind: str
    hooks: list[Hook] = field(default_factory=list)
    weights: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)


def build(kind: str) -> HookedTransformer:
    """The tiny model `kind` (a key of MODELS), random weights, seed 0.

    Example:
        >>> build("rotary-gqa").cfg.n_key_value_heads
        2
    """
    torch.manual_seed(0)
    return HookedTransformer(HookedTransformerConfig(**SIZES, **MODELS[kind]))


def fired(model: HookedTransformer) -> list[Hook]:
    """The hook points that fire in one forward, in order (first firing), with their shapes."""
    seen: dict[str, Hook] = {}

    def record(name: str):  # noqa: ANN202
        def hook(tensor: torch.Tensor, hook: object) -> None:
            seen.setdefault(name, Hook(name, tuple(tensor.shape)))

        return hook

    tokens = torch.randint(0, SIZES["d_vocab"], (BATCH, POS))
    model.run_with_hooks(
        tokens, fwd_hooks=[(n, record(n)) for n in model.hook_dict if enabled(model, n)]
    )
    return list(seen.values())


def enabled(model: HookedTransformer, name: str) -> bool:
    """Whether hook point `name` fires under the model's current switches (lmscope refuses a hook
    on one that cannot, with HookNotEnabledError naming the switch)."""
    try:
        with model.hooks(fwd_hooks=[(name, lambda tensor, hook: None)]):
            return True
    except HookNotEnabledError:
        return False


def hook_table(model: HookedTransformer) -> list[Hook]:
    """Every hook point of `model`: the default forward's, then each switch's own, in place."""
    table = fired(model)
    for switch in SWITCHES:
        getattr(model, switch)(True)
        try:
            run = fired(model)
        finally:
            getattr(model, switch)(False)
        known = {h.name for h in table}
        for i, hook in enumerate(run):
            if hook.name in known:
                continue
            hook.switch = switch
            before = {h.name for h in run[:i]}
            at = max((j + 1 for j, h in enumerate(table) if h.name in before), default=0)
            table.insert(at, hook)
            known.add(hook.name)
    missing = set(model.hook_dict) - {h.name for h in table}
    if missing:
        raise RuntimeError(f"hook points that never fired, add their switch to SWITCHES: {missing}")
    return table


def weights_of(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The TransformerLens-layout weights of one module (views such as W_Q) and their shapes."""
    names = [
        n for n in dir(type(module)) + list(module._parameters) if n.startswith(WEIGHT_PREFIXES)
    ]
    if module.__class__.__name__.endswith("Norm"):
        names += [n for n in NORM_WEIGHTS if getattr(module, n, None) is not None]
    out = {}
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, torch.Tensor):
            out[name] = tuple(value.shape)
    rank = {name: i for i, name in enumerate(WEIGHT_ORDER)}
    return sorted(out.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def modules(model: HookedTransformer, table: list[Hook]) -> list[Module]:
    """Cut the hook table into runs of consecutive hook points owned by one module, in firing
    order; each module's weights go with its first run. The model's own hook_embed /
    hook_pos_embed are drawn in the embedding modules, and the unembedding (no hook point of its
    own) closes the list."""
    runs: list[Module] = []
    drawn: set[str] = set()
    for hook in table:
        owner = hook.name.rpartition(".")[0]
        if owner == "" and hook.name.removeprefix("hook_") in dict(model.named_children()):
            owner = hook.name.removeprefix("hook_")
        if not runs or runs[-1].name != owner:
            module = model.get_submodule(owner) if owner else model
            weights = [] if owner in drawn or _is_stream(owner) else weights_of(module)
            runs.append(Module(owner, type(module).__name__, weights=weights))
            drawn.add(owner)
        runs[-1].hooks.append(hook)
    if "unembed" not in drawn:
        unembed = model.get_submodule("unembed")
        runs.append(Module("unembed", type(unembed).__name__, [], weights_of(unembed)))
    return runs


def _is_stream(owner: str) -> bool:
    """Hook points of the model or a block itself sit on the residual stream, not in a module."""
    return owner == "" or (owner.startswith("blocks.") and owner.count(".") == 1)


WEIGHT_ORDER = ["W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_gate",
                "W_in", "W_out", "b_gate", "b_in", "b_out", "W_U", "b_U", "w", "b"]  # fmt: skip


def dims(shape: tuple[int, ...], hook_name: str = "") -> str:
    """Name each size: [3, 4, 5, 5] at hook_pattern -> [batch, head_index, query_pos, key_pos]."""
    names = [DIM_NAMES.get(n, str(n)) for n in shape]
    if hook_name.endswith(("hook_pattern", "hook_attn_scores")):
        names[-2:] = ["query_pos", "key_pos"]
    return "[" + ", ".join(names) + "]"


def svg(title: str, groups: list[Module], block_only: bool) -> str:
    """Draw the groups as boxes along the residual stream: hooks left, weights right."""
    row, width, x0 = 17, 980, 40
    parts: list[str] = []
    y = 50
    for group in groups:
        n = max(len(group.hooks), len(group.weights))
        if _is_stream(group.name):
            for hook in group.hooks:  # block-level hooks sit on the residual stream itself
                parts.append(f'<circle cx="{x0}" cy="{y + 5}" r="4" class="res"/>')
                parts.append(
                    _text(
                        x0 + 12, y + 9, hook.name, dims(hook.shape, hook.name), hook.switch, "resid"
                    )
                )
                y += row
            y += 6
            continue
        h = n * row + 28
        parts.append(
            f'<rect x="{x0 + 20}" y="{y}" width="{width - x0 - 40}" height="{h}" rx="6" class="box"/>'
        )
        parts.append(
            f'<text x="{x0 + 30}" y="{y + 16}" class="mod">{escape(group.name)} ({group.kind})</text>'
        )
        for i, hook in enumerate(group.hooks):
            parts.append(
                _text(
                    x0 + 30,
                    y + 34 + i * row,
                    hook.name.rpartition(".")[2],
                    dims(hook.shape, hook.name),
                    hook.switch,
                    "hook",
                )
            )
        for i, (name, shape) in enumerate(group.weights):
            parts.append(_text(x0 + 560, y + 34 + i * row, name, dims(shape), "", "weight"))
        y += h + 10
    height = y + 44
    legend = (
        f'<text x="{x0}" y="{height - 24}" class="legend">Hook points in firing order (full name = '
        'module + "." + name; dark red: on the residual stream), shapes named from a batch 3 x pos 5 '
        f'run.</text><text x="{x0}" y="{height - 10}" class="legend">Blue: weights (TransformerLens '
        "layout views). Grey: fires only after the set_use_* switch named.</text>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">'
        "<style>.box{fill:#f7f7fb;stroke:#8a8fb5}.mod{font-weight:bold;fill:#23275a}"
        ".hook{fill:#111}.resid{fill:#7a1d1d}.weight{fill:#1f4fa8}.switch{fill:#888}"
        ".res{fill:#7a1d1d}.title{font-size:15px;font-weight:bold}.legend{fill:#555;font-size:11px}"
        ".stream{stroke:#c99;stroke-width:3}</style>"
        f'<line x1="{x0}" y1="40" x2="{x0}" y2="{height - 40}" class="stream"/>'
        f'<text x="{x0}" y="24" class="title">{escape(title)}</text>'
        + "".join(parts)
        + legend
        + "</svg>\n"
    )


def _text(x: int, y: int, name: str, shape: str, switch: str, cls: str) -> str:
    note = f' <tspan class="switch">({switch})</tspan>' if switch else ""
    return f'<text x="{x}" y="{y}" class="{cls if not switch else "switch"}">{escape(name)} {escape(shape)}{note}</text>'


def file_names() -> list[str]:
    """The names of the SVGs main() writes (docs/diagram.md links each)."""
    return [f"{kind}-{part}.svg" for kind in MODELS for part in ("block", "model")]


def diagrams(kind: str) -> dict[str, str]:
    """The two SVGs of one model: `{kind}-block.svg` (block 0) and `{kind}-model.svg` (all of it)."""
    model = build(kind)
    groups = modules(model, hook_table(model))
    block = [g for g in groups if g.name == "blocks.0" or g.name.startswith("blocks.0.")]
    cfg = model.cfg
    what = f"n_heads {cfg.n_heads}, K/V heads {cfg.n_key_value_heads or cfg.n_heads}, {cfg.normalization_type}, {cfg.positional_embedding_type} positions, {cfg.act_fn}"
    return {
        f"{kind}-block.svg": svg(f"One block of the {kind} model ({what})", block, True),
        f"{kind}-model.svg": svg(
            f"The whole {kind} model, {cfg.n_layers} blocks ({what})", groups, False
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the SVGs (docs/diagrams)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for kind in MODELS:
        for name, text in diagrams(kind).items():
            (args.out / name).write_text(text)
            print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
