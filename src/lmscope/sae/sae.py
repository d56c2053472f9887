"""A sparse autoencoder with SAELens's semantics, parameters and on-disk format.

One class for the four architectures SAELens ships most (the architecture is a switch of the
encoder, as lmscope's components switch on their config):

    standard   acts = relu(pre),  pre = x' @ W_enc + b_enc
    topk       acts = relu of the k largest of pre [* |W_dec rows|], the rest 0
    jumprelu   acts = relu(pre) * (pre > threshold)
    gated      acts = (x' @ W_enc + b_gate > 0) * relu(x' @ (W_enc * exp(r_mag)) + b_mag)
    decode     out = acts [/ |W_dec rows|] @ W_dec + b_dec

where x' = normalise(x) - b_dec * apply_b_dec_to_input. Hook points (as SAELens): hook_sae_input
(the input, after reshaping), hook_sae_acts_pre, hook_sae_acts_post (the feature activations),
hook_sae_recons (the reconstruction), hook_sae_error and hook_sae_output.

A directory of `cfg.json` + `sae_weights.safetensors` is SAELens's format: `SAE.load_from_disk`
reads one SAELens wrote, `save_model` writes one `sae_lens.SAE.load_from_disk` reads.

Example:
    >>> sae = SAE.load_from_disk("my_sae")        # cfg.json + sae_weights.safetensors
    >>> acts = sae.encode(resid)                  # [batch, pos, d_sae]
    >>> sae.decode(acts).shape == resid.shape
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmscope.hooks import HookedRootModule, HookPoint, silenced
from lmscope.sae.config import SAEConfig, dtype_name, dtype_of

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
HOOK_NAMES = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_output",
    "hook_sae_recons",
    "hook_sae_error",
)


def parameter_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The parameters of an SAE of `cfg` and their shapes, as SAELens names them."""
    shapes: dict[str, tuple[int, ...]] = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    if cfg.arch == "gated":
        shapes.update(b_gate=(cfg.d_sae,), r_mag=(cfg.d_sae,), b_mag=(cfg.d_sae,))
    else:
        shapes["b_enc"] = (cfg.d_sae,)
    if cfg.arch == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    return shapes


class SAE(HookedRootModule):
    """A sparse autoencoder (SAELens's `SAE`): see the module docstring.

    `SAE(cfg)` draws decoder rows uniformly (kaiming), sets the encoder to the decoder's transpose
    and every bias to zero, as SAELens; `SAE.load_from_disk(path)` reads trained weights.
    """

    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    def __init__(self, cfg: SAEConfig, use_error_term: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.use_error_term = use_error_term
        dtype, device = dtype_of(cfg.dtype), torch.device(cfg.device)
        for name, shape in parameter_shapes(cfg).items():
            self.register_parameter(
                name, nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))
            )
        if device.type != "meta":
            with torch.no_grad():
                nn.init.kaiming_uniform_(self.W_dec)
                self.W_enc.copy_(self.W_dec.T)
        for name in HOOK_NAMES:
            setattr(self, name, HookPoint())
        self._norm_state: tuple[Tensor, Tensor] | None = None  # what decode undoes
        self._d_head: int | None = None  # a hook_z SAE's last input's head width
        self.setup()

    # -- properties as SAELens's -------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def _apply(self, fn: Any, recurse: bool = True) -> SAE:
        """After `.to(...)`, `cfg.dtype` and `cfg.device` describe the parameters again."""
        super()._apply(fn, recurse)
        self.cfg.dtype, self.cfg.device = dtype_name(self.W_dec.dtype), str(self.W_dec.device)
        return self

    # -- the computation ---------------------------------------------------------------------------
    def process_sae_in(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """The encoder's input: x in the SAE's dtype, flattened over heads (hook_z SAEs),
        through hook_sae_input, normalised, minus b_dec (with apply_b_dec_to_input)."""
        x = x.to(self.dtype)
        if self.cfg.reshape_activations == "hook_z":  # [..., head, d_head] -> [..., head * d_head]
            self._d_head = x.shape[-1]
            x = x.flatten(-2)
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"the SAE takes vectors of d_in={self.cfg.d_in}, but the activation has "
                f"{x.shape[-1]} values per position (shape {tuple(x.shape)}): this SAE was trained "
                f"on another model or hook ({self.cfg.metadata.hook_name})"
            )
        x = self._normalise(self.hook_sae_input(x))
        return x - self.b_dec * self.cfg.apply_b_dec_to_input

    def _normalise(self, x: Tensor) -> Tensor:
        kind = self.cfg.normalize_activations
        if kind == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            self._norm_state = (mu, std)
            return x / (std + 1e-5)
        if kind == "constant_norm_rescale":
            coeff = self.cfg.d_in**0.5 / x.norm(dim=-1, keepdim=True)
            self._norm_state = (coeff, coeff)
            return x * coeff
        return x

    def _denormalise(self, x: Tensor) -> Tensor:
        kind = self.cfg.normalize_activations
        if kind not in ("layer_norm", "constant_norm_rescale"):
            return x
        if self._norm_state is None:
            raise RuntimeError(f"decode after encode: a {kind} SAE rescales by its input's norm")
        first, second = self._norm_state
        self._norm_state = None
        return x * second + first if kind == "layer_norm" else x / first

    def encode_with_hidden_pre(
        self, x: Float[Tensor, "... d_in"]
    ) -> tuple[Float[Tensor, "... d_sae"], Float[Tensor, "... d_sae"]]:
        """(feature activations, pre-activations); what training needs."""
        sae_in = self.process_sae_in(x)
        arch = self.cfg.arch
        if arch == "gated":
            gate = (sae_in @ self.W_enc + self.b_gate) > 0
            pre = self.hook_sae_acts_pre(sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
            return self.hook_sae_acts_post(gate.to(pre.dtype) * torch.relu(pre)), pre
        pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        if arch == "standard":
            acts = torch.relu(pre)
        elif arch == "jumprelu":
            acts = torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        else:  # topk
            ranked = pre * self.W_dec.norm(dim=-1) if self.cfg.rescale_acts_by_decoder_norm else pre
            values, indices = torch.topk(ranked, self.cfg.k, dim=-1, sorted=False)  # type: ignore[arg-type]
            acts = torch.zeros_like(ranked).scatter_(-1, indices, values.relu())
            pre = ranked
        return self.hook_sae_acts_post(acts), pre

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations of `x` (through hook_sae_acts_pre / hook_sae_acts_post).

        Example:
            >>> sae.encode(resid).shape     # [..., d_sae]
        """
        return self.encode_with_hidden_pre(x)[0]

    def decode(self, feature_acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """The reconstruction (through hook_sae_recons), un-normalised and reshaped back.

        Example:
            >>> sae.decode(sae.encode(resid)).shape == resid.shape
            True
        """
        if self.cfg.arch == "topk" and self.cfg.rescale_acts_by_decoder_norm:
            feature_acts = feature_acts * (1 / self.W_dec.norm(dim=-1))  # SAELens's rounding
        out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        out = self._denormalise(out)
        if self.cfg.reshape_activations == "hook_z":
            if self._d_head is None:
                raise RuntimeError(
                    "a hook_z SAE decodes after encoding a [..., head, d_head] input"
                )
            out = out.unflatten(-1, (-1, self._d_head))
        return out

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """decode(encode(x)), plus the error x - reconstruction with `use_error_term` (computed
        with no hooks firing, so edits of the features show in the output), through
        hook_sae_output."""
        out = self.decode(self.encode(x))
        if self.use_error_term:
            out = out + self.hook_sae_error(self.error_term(x))
        return self.hook_sae_output(out)

    @torch.no_grad()
    def error_term(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """x minus the SAE's reconstruction of it with no hook firing (SAELens's error term)."""
        with silenced(list(self.hook_dict.values())):
            return x.to(self.dtype) - self.decode(self.encode(x))

    # -- SAELens utilities ------------------------------------------------------------------------
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Scale each decoder row to norm 1 and the encoder (and the thresholds / gate biases) by
        the row's norm, which leaves the reconstruction unchanged (not for top-k SAEs ranked by
        raw pre-activations: the ranking would change).

        Example:
            >>> sae.fold_W_dec_norm(); sae.W_dec.norm(dim=-1)    # all ones
        """
        if self.cfg.arch == "topk" and not self.cfg.rescale_acts_by_decoder_norm:
            raise NotImplementedError(
                "folding W_dec norms changes which features a top-k SAE keeps unless it ranks by "
                "pre-activation * decoder norm (rescale_acts_by_decoder_norm)"
            )
        norms = self.W_dec.norm(dim=-1).clamp(min=1e-8)
        self.W_dec /= norms[:, None]
        self.W_enc *= norms[None, :]
        for name in ("b_enc", "b_gate", "b_mag", "threshold"):
            if hasattr(self, name):
                getattr(self, name).mul_(norms)

    # -- files ---------------------------------------------------------------------------------------
    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        """Write `sae_weights.safetensors` and `cfg.json` (SAELens 6's format) into `path`;
        returns their paths, as SAELens.

        Example:
            >>> sae.save_model("my_sae")       # sae_lens.SAE.load_from_disk("my_sae") reads it
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(weights, path / WEIGHTS_FILE)
        (path / CFG_FILE).write_text(json.dumps(self.cfg.to_dict()))
        return path / WEIGHTS_FILE, path / CFG_FILE

    @classmethod
    def load_from_disk(cls, path: str | Path, device: str = "cpu", dtype: str | None = None) -> SAE:
        """Read an SAE directory in SAELens's format (cfg.json + sae_weights.safetensors).

        Example:
            >>> sae = SAE.load_from_disk("my_sae", device="cuda")
        """
        path = Path(path)
        files = [path / CFG_FILE, path / WEIGHTS_FILE]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not an SAE directory in SAELens's format: it lacks {missing}"
            )
        d = json.loads(files[0].read_text())
        d["device"] = device
        if dtype is not None:
            d["dtype"] = dtype
        try:
            cfg = SAEConfig.from_dict(d)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{files[0]}: {err}") from None
        state = load_file(files[1])
        if "log_threshold" in state:  # older JumpReLU files (SAELens converts them alike)
            state["threshold"] = state.pop("log_threshold").exp()
        expected = parameter_shapes(cfg)
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != expected:
            raise ValueError(
                f"{files[1]} holds {got}, but a {cfg.arch} SAE of d_in={cfg.d_in}, "
                f"d_sae={cfg.d_sae} needs {expected}: the weights do not belong to cfg.json"
            )
        device_cfg = cfg.device
        cfg.device = "meta"
        sae = cls(cfg)
        sae.load_state_dict({k: v.to(dtype_of(cfg.dtype)) for k, v in state.items()}, assign=True)
        return sae.to(device_cfg)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> SAE:
        """A freshly initialised SAE of a cfg.json-style dict (SAELens's `SAE.from_dict`).

        Example:
            >>> SAE.from_dict({"architecture": "topk", "d_in": 64, "d_sae": 512, "k": 8})
        """
        return cls(SAEConfig.from_dict({"sae_lens_version": "6", **config_dict}))

    def get_name(self) -> str:
        """SAELens's name for the SAE: sae_{model}_{hook}_{d_sae}."""
        meta = self.cfg.metadata
        return f"sae_{meta.model_name}_{meta.hook_name}_{self.cfg.d_sae}"

    def __repr__(self) -> str:
        cfg = self.cfg
        return (
            f"SAE({cfg.arch}, d_in={cfg.d_in}, d_sae={cfg.d_sae}"
            + (f", k={cfg.k}" if cfg.arch == "topk" else "")
            + f", hook_name={cfg.metadata.hook_name!r})"
        )
