"""HookedSAETransformer: a HookedTransformer that splices SAEs into its forward pass, with
SAELens's API (`add_sae`, `run_with_saes`, `run_with_cache_with_saes`, `reset_saes`, `saes()`).

An SAE attached at `hook_name` (`sae.cfg.metadata.hook_name`) replaces that hook point: the
activation goes through the SAE and its reconstruction flows on. The SAE's hook points appear
under the hook's name, `{hook_name}.hook_sae_input`, `.hook_sae_acts_pre`, `.hook_sae_acts_post`,
`.hook_sae_recons`, `.hook_sae_error`, `.hook_sae_output`, and `hook_name` itself is not a hook
point while the SAE is there (as in SAELens). With `use_error_term=True` the SAE adds back its
error (input - reconstruction, computed with no hook firing), so the model computes what it
computed without the SAE, while edits of the features (hooks on `hook_sae_acts_post`) still change
the output, and gradients reach the features (the error term carries none).

Example:
    >>> model = HookedSAETransformer.from_pretrained("smollm2-135m")
    >>> sae = SAE.load_from_disk("sae_layer15")
    >>> logits, cache = model.run_with_cache_with_saes("Hello", saes=[sae])
    >>> cache["blocks.15.hook_resid_post.hook_sae_acts_post"].shape     # [1, pos, d_sae]
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from lmscope.hooks import HookPoint, silenced
from lmscope.model import HookedTransformer
from lmscope.sae.sae import SAE

# Hook-name endings whose activation width the config gives (checked when an SAE is added).
_WIDTH_BY_SUFFIX = {
    "hook_resid_pre": "d_model",
    "hook_resid_mid": "d_model",
    "hook_resid_post": "d_model",
    "hook_attn_out": "d_model",
    "hook_mlp_out": "d_model",
    "hook_embed": "d_model",
    "hook_pos_embed": "d_model",
    "mlp.hook_pre": "d_mlp",
    "mlp.hook_post": "d_mlp",
    "attn.hook_z": "z",
}


class SAESplice(HookPoint):
    """What stands at a hook point while an SAE is attached there: it runs the SAE (SAELens's
    `_SAEWrapper`). The SAE's own hook points are its children, so the model names them
    `{hook_name}.hook_sae_*`; it has its own hook_sae_error and hook_sae_output."""

    def __init__(self, sae: SAE, original: HookPoint, use_error_term: bool) -> None:
        super().__init__()
        self.__dict__["sae"] = sae  # not a submodule: its hooks keep the names above
        self.__dict__["original"] = original
        for name in (
            "hook_sae_input",
            "hook_sae_acts_pre",
            "hook_sae_acts_post",
            "hook_sae_recons",
        ):
            setattr(self, name, getattr(sae, name))
        self.hook_sae_error = HookPoint()
        self.hook_sae_output = HookPoint()
        self.use_error_term = use_error_term

    def __call__(self, x: Tensor) -> Tensor:
        sae: SAE = self.__dict__["sae"]
        out = sae.decode(sae.encode(x))
        if self.use_error_term:
            with torch.no_grad():
                points = [self.hook_sae_input, self.hook_sae_acts_pre, self.hook_sae_acts_post]
                points.append(self.hook_sae_recons)
                if any(p.has_hooks() for p in points):  # recompute as the SAE alone would
                    with silenced(points):
                        clean = sae.decode(sae.encode(x))
                else:
                    clean = out.detach()
                error = self.hook_sae_error(x.to(clean.dtype) - clean)
            out = out + error
        return self.hook_sae_output(out.to(x.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self(x)

    def fires(self) -> bool:
        return True  # the SAE always runs: what a component computes for its hooks is needed

    def has_hooks(self, *args: Any, **kwargs: Any) -> bool:
        return True


def _set_module(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, module)


class HookedSAETransformer(HookedTransformer):
    """A HookedTransformer with SAELens's SAE-splicing methods (see the module docstring).

    Build it as a HookedTransformer: `HookedSAETransformer(cfg)`,
    `HookedSAETransformer.from_pretrained(name)`, `.from_pretrained_no_processing(name)`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acts_to_saes: dict[str, SAESplice] = {}

    @classmethod
    def from_pretrained(cls, model_name: str, *args: Any, **kwargs: Any) -> HookedSAETransformer:
        """`HookedTransformer.from_pretrained` (same arguments), returning a HookedSAETransformer.

        Example:
            >>> model = HookedSAETransformer.from_pretrained("smollm2-135m")
        """
        return cls._adopt(HookedTransformer.from_pretrained(model_name, *args, **kwargs))

    @classmethod
    def from_pretrained_no_processing(
        cls, model_name: str, *args: Any, **kwargs: Any
    ) -> HookedSAETransformer:
        """`HookedTransformer.from_pretrained_no_processing`, returning a HookedSAETransformer.

        Example:
            >>> model = HookedSAETransformer.from_pretrained_no_processing("smollm2-135m")
        """
        model = HookedTransformer.from_pretrained_no_processing(model_name, *args, **kwargs)
        return cls._adopt(model)

    @classmethod
    def _adopt(cls, model: HookedTransformer) -> HookedSAETransformer:
        """Make a loaded HookedTransformer this class (it adds state, no parameters)."""
        model.__class__ = cls
        model._acts_to_saes = {}  # type: ignore[attr-defined]
        return model  # type: ignore[return-value]

    def setup(self) -> None:
        """Index hook points as HookedRootModule does, leaving out the spliced hook names (an SAE
        stands there: its `hook_sae_*` points are indexed instead)."""
        super().setup()
        for name in [n for n, hp in self.hook_dict.items() if isinstance(hp, SAESplice)]:
            del self.hook_dict[name]

    @property
    def acts_to_saes(self) -> dict[str, SAE]:
        """{hook name: the SAE attached there}."""
        return {name: splice.__dict__["sae"] for name, splice in self._acts_to_saes.items()}

    def add_sae(self, sae: SAE, use_error_term: bool | None = None) -> None:
        """Attach `sae` at `sae.cfg.metadata.hook_name` until `reset_saes` (replacing an SAE
        already there). `use_error_term` (default: the SAE's own setting) adds the SAE's error
        back, so the model's output is unchanged.

        Example:
            >>> model.add_sae(sae, use_error_term=True)
        """
        name = sae.cfg.metadata.hook_name
        self._check_sae(sae, name)
        if name in self._acts_to_saes:
            self._reset_sae(name)
        original = self.hook_dict[name]
        error = sae.use_error_term if use_error_term is None else use_error_term
        splice = SAESplice(sae, original, error)
        _set_module(self, name, splice)
        self._acts_to_saes[name] = splice
        self.setup()

    def _check_sae(self, sae: SAE, name: str | None) -> None:
        """Refuse an SAE whose hook is not in this model or whose width is not the hook's."""
        if not isinstance(sae, SAE):
            raise TypeError(f"add_sae takes an lmscope SAE, got {type(sae).__name__}")
        if name is None:
            raise ValueError(
                "the SAE names no hook (cfg.metadata.hook_name is None): set "
                "sae.cfg.metadata.hook_name to the hook it was trained on"
            )
        if name not in self.hook_dict and name not in self._acts_to_saes:
            close = difflib.get_close_matches(name, self.hook_dict.keys(), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(
                f"the SAE's hook {name!r} is not a hook point of this model.{hint} The SAE was "
                f"trained on {sae.cfg.metadata.model_name or 'another model'}; "
                "`model.hook_dict` lists this model's hooks"
            )
        width = self._hook_width(name)
        if width is not None and width != sae.cfg.d_in:
            raise ValueError(
                f"the SAE takes d_in={sae.cfg.d_in} values, but {name} carries {width} in this "
                f"model ({self.cfg.model_name}); the SAE was trained on "
                f"{sae.cfg.metadata.model_name or 'another model'}"
            )

    def _hook_width(self, name: str) -> int | None:
        """How many values `name` carries per position (per token), when the config says."""
        for suffix, field in _WIDTH_BY_SUFFIX.items():
            if name.endswith(suffix):
                if field == "z":
                    return self.cfg.n_heads * self.cfg.d_head
                return getattr(self.cfg, field)
        return None

    def _reset_sae(self, name: str, previous: SAESplice | None = None) -> None:
        """Put the original hook point back at `name` (then `previous`'s SAE, if given)."""
        splice = self._acts_to_saes.pop(name, None)
        if splice is None:
            return
        _set_module(self, name, splice.__dict__["original"])
        splice.__dict__["sae"].setup()  # its hook points are named as its own again
        self.setup()
        if previous is not None:
            self.add_sae(previous.__dict__["sae"], previous.use_error_term)

    def reset_saes(self, act_names: str | Sequence[str] | None = None) -> None:
        """Remove the SAEs at `act_names` (default: all).

        Example:
            >>> model.reset_saes()
        """
        names = [act_names] if isinstance(act_names, str) else act_names
        for name in list(self._acts_to_saes) if names is None else names:
            self._reset_sae(name)

    @contextmanager
    def saes(
        self,
        saes: SAE | Sequence[SAE] = (),
        reset_saes_end: bool = True,
        use_error_term: bool | None = None,
    ) -> Iterator[HookedSAETransformer]:
        """Context manager: attach `saes` inside the block; on exit remove them and put back
        the SAEs that were attached before (with `reset_saes_end`).

        Example:
            >>> with model.saes(saes=[sae]):
            ...     logits = model(tokens)
        """
        saes = [saes] if isinstance(saes, SAE) else list(saes)
        restore: list[tuple[str, SAESplice | None]] = []
        try:
            for sae in saes:
                name = sae.cfg.metadata.hook_name
                self._check_sae(sae, name)
                restore.append((name, self._acts_to_saes.get(name)))
                self.add_sae(sae, use_error_term)
            yield self
        finally:
            if reset_saes_end:
                for name, previous in reversed(restore):
                    self._reset_sae(name, previous)

    def run_with_saes(
        self,
        *model_args: Any,
        saes: SAE | Sequence[SAE] = (),
        reset_saes_end: bool = True,
        use_error_term: bool | None = None,
        **model_kwargs: Any,
    ) -> Any:
        """The forward pass with `saes` attached for this call.

        Example:
            >>> logits = model.run_with_saes(tokens, saes=[sae])
        """
        with self.saes(saes, reset_saes_end, use_error_term):
            return self(*model_args, **model_kwargs)

    def run_with_cache_with_saes(
        self,
        *model_args: Any,
        saes: SAE | Sequence[SAE] = (),
        reset_saes_end: bool = True,
        use_error_term: bool | None = None,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """`run_with_cache` with `saes` attached for this call; the cache holds the SAEs' hooks
        (`{hook_name}.hook_sae_acts_post`, ...).

        Example:
            >>> _, cache = model.run_with_cache_with_saes(tokens, saes=[sae])
        """
        with self.saes(saes, reset_saes_end, use_error_term):
            return self.run_with_cache(*model_args, **kwargs)

    def run_with_hooks_with_saes(
        self,
        *model_args: Any,
        saes: SAE | Sequence[SAE] = (),
        reset_saes_end: bool = True,
        fwd_hooks: Sequence[Any] = (),
        bwd_hooks: Sequence[Any] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """`run_with_hooks` with `saes` attached for this call (hooks may name SAE hooks).

        Example:
            >>> model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(name, ablate)])
        """
        with self.saes(saes, reset_saes_end):
            return self.run_with_hooks(
                *model_args,
                fwd_hooks=fwd_hooks,
                bwd_hooks=bwd_hooks,
                reset_hooks_end=reset_hooks_end,
                clear_contexts=clear_contexts,
                **model_kwargs,
            )
