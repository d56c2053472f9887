"""Small helpers with TransformerLens names: activation names, losses, tensor conversion."""

from __future__ import annotations

import re

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

_NAME_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_LAYER_TYPE_ALIASES = {
    "a": "attn",
    "m": "mlp",
    "b": "",
    "block": "",
    "blocks": "",
    "attention": "attn",
}
_ATTN_NAMES = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_NAMES = {"pre", "post", "mid", "pre_linear"}
_SHORTHAND = re.compile(r"^([a-z_]+?)(\d+)([a-z_]\w*)?$")


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from TransformerLens shorthand.

    Example:
        >>> get_act_name("pattern", 3)
        'blocks.3.attn.hook_pattern'
        >>> get_act_name("k6"), get_act_name("scale4ln1"), get_act_name("resid_post", 0)
        ('blocks.6.attn.hook_k', 'blocks.4.ln1.hook_scale', 'blocks.0.hook_resid_post')
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name  # already a full name
    match = _SHORTHAND.match(name)
    if match is not None and layer is None:
        name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3)
    name = _NAME_ALIASES.get(name, name)
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIASES:
        layer_type = _LAYER_TYPE_ALIASES[layer_type]
    if name in ("scale", "normalized") and layer is None:
        return f"ln_final.hook_{name}"
    full = ""
    if layer is not None:
        if layer < 0:
            raise ValueError(
                f"layer {layer} is negative; index the cache (cache[name, -1]) for that"
            )
        full += f"blocks.{layer}."
    if layer_type:
        full += f"{layer_type}."
    return full + f"hook_{name}"


def lm_cross_entropy_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    per_token: bool = False,
) -> Float[Tensor, ""] | Float[Tensor, "batch pos_minus_1"]:
    """Next-token cross-entropy. With a mask, a prediction counts only when both the position it
    is made from and the token it predicts are real (not padding)."""
    log_probs = logits[:, :-1].log_softmax(dim=-1)
    nll = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    if attention_mask is None:
        return nll if per_token else nll.mean()
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(nll.dtype)
    if per_token:
        return nll * valid
    return (nll * valid).sum() / valid.sum().clamp(min=1)


def to_numpy(x: Tensor | np.ndarray | list | float | int) -> np.ndarray:
    """A tensor (any device, with or without grad), list or number as a numpy array."""
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def get_device() -> torch.device:
    """The best device here: CUDA, then MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
