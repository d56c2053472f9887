"""Run by tests/sae/test_saelens_parity.py with the SAELens environment's Python (.venv-sae:
sae-lens and its TransformerLens 3.9 beside lmscope): prints a JSON of the largest differences
between lmscope and SAELens on the same saved SAEs and the same model weights.

    .venv-sae/bin/python tests/sae/saelens_parity.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
import sae_lens  # noqa: E402
import transformer_lens  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from test_sae import make_sae  # noqa: E402  (this folder is the script's sys.path[0])

import lmscope  # noqa: E402
from lmscope.loading.families.lmscope_checkpoint import save_checkpoint  # noqa: E402

MODEL = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, act_fn="gelu_new")
CASES = {  # name: (architecture, extra cfg fields, hook)
    "standard": ("standard", {}, "blocks.0.hook_resid_post"),
    "topk": ("topk", {"k": 6}, "blocks.1.hook_resid_pre"),
    "topk_rescaled": (
        "topk",
        {"k": 6, "rescale_acts_by_decoder_norm": True},
        "blocks.0.hook_mlp_out",
    ),
    "jumprelu": ("jumprelu", {}, "blocks.1.hook_resid_post"),
    "gated": ("gated", {}, "blocks.0.hook_attn_out"),
    "layer_norm_no_bdec": (
        "standard",
        {"normalize_activations": "layer_norm", "apply_b_dec_to_input": False},
        "blocks.1.hook_resid_mid",
    ),
    "hook_z": ("standard", {"reshape_activations": "hook_z"}, "blocks.1.attn.hook_z"),
}


def lmscope_sae(arch: str, extra: dict, hook: str, seed: int) -> lmscope.SAE:
    d_in = MODEL["n_heads"] * MODEL["d_head"] if hook.endswith("hook_z") else MODEL["d_model"]
    sae = make_sae(arch, d_in=d_in, d_sae=48, seed=seed, **extra)
    sae.cfg.metadata = lmscope.sae.SAEMetadata(hook_name=hook, model_name="tiny")
    return sae


def main(out: Path) -> None:
    diffs: dict[str, float] = {}
    model = lmscope.HookedSAETransformer(lmscope.HookedTransformerConfig(**MODEL, seed=0))
    save_checkpoint(model, out / "model")
    tl = sae_lens.HookedSAETransformer(transformer_lens.HookedTransformerConfig(**MODEL))
    missing, unexpected = tl.load_state_dict(
        load_file(out / "model" / "model.safetensors"), strict=False
    )
    assert not unexpected and all(k.endswith(("IGNORE", "mask")) for k in missing), (
        missing,
        unexpected,
    )
    tokens = torch.randint(0, MODEL["d_vocab"], (3, 12), generator=torch.Generator().manual_seed(1))
    diffs["model_logits"] = float((tl(tokens) - model(tokens)).abs().max())
    x_gen = torch.Generator().manual_seed(2)
    for i, (case, (arch, extra, hook)) in enumerate(CASES.items()):
        ours = lmscope_sae(arch, extra, hook, seed=10 + i)
        ours.save_model(out / case)
        theirs = sae_lens.SAE.load_from_disk(out / case)
        shape = (
            (4, 5, MODEL["n_heads"], MODEL["d_head"]) if case == "hook_z" else (4, 5, ours.cfg.d_in)
        )
        x = torch.randn(shape, generator=x_gen)
        acts_ours, acts_theirs = ours.encode(x), theirs.encode(x)
        diffs[f"{case}.encode"] = float((acts_ours - acts_theirs).abs().max())
        diffs[f"{case}.decode"] = float(
            (ours.decode(acts_ours) - theirs.decode(acts_ours)).abs().max()
        )
        diffs[f"{case}.active_features_differ"] = float(
            ((acts_ours > 0) != (acts_theirs > 0)).sum()
        )
        # SAELens's own file, read by lmscope
        theirs.save_model(out / f"{case}_saelens")
        back = lmscope.SAE.load_from_disk(out / f"{case}_saelens")
        diffs[f"{case}.saelens_file_encode"] = float((back.encode(x) - acts_theirs).abs().max())
        # SAELens's SAE on the activation lmscope's spliced run fed its SAE
        _, raw = model.run_with_cache(tokens, names_filter=hook)
        _, spliced = model.run_with_cache_with_saes(tokens, saes=[ours])
        with torch.no_grad():
            acts = theirs.encode(raw[hook])
            recons = acts @ theirs.W_dec + theirs.b_dec if arch != "topk" else None
        diffs[f"{case}.same_activations.acts"] = float(
            (acts - spliced[f"{hook}.hook_sae_acts_post"]).abs().max()
        )
        if recons is not None and not extra:
            diffs[f"{case}.same_activations.recons"] = float(
                (recons - spliced[f"{hook}.hook_sae_recons"]).abs().max()
            )
        # spliced runs: logits and every SAE hook in the cache, with and without the error term
        for error in (False, True):
            tag = f"{case}.spliced{'_error' if error else ''}"
            logits_t, cache_t = tl.run_with_cache_with_saes(
                tokens, saes=[theirs], use_error_term=error
            )
            logits_o, cache_o = model.run_with_cache_with_saes(
                tokens, saes=[ours], use_error_term=error
            )
            diffs[f"{tag}.logits"] = float((logits_t - logits_o).abs().max())
            names = sorted(k for k in cache_t.keys() if ".hook_sae_" in k)
            assert names == sorted(k for k in cache_o.keys() if ".hook_sae_" in k), (tag, names)
            diffs[f"{tag}.n_sae_hooks"] = float(len(names))
            diffs[f"{tag}.sae_hooks"] = max(
                float((cache_t[n] - cache_o[n]).abs().max()) for n in names
            )
    # an SAE trained by lmscope.sae.train, saved, read by SAELens
    acts = torch.randn(4096, MODEL["d_model"], generator=x_gen) + 1
    config = lmscope.sae.SAETrainConfig(
        d_sae=64, k=4, batch_size=256, training_tokens=4096, verbose=False
    )
    trained = lmscope.sae.train(acts, config, metadata={"hook_name": "blocks.0.hook_resid_post"})
    trained.save_model(out / "trained")
    theirs = sae_lens.SAE.load_from_disk(out / "trained")
    diffs["trained.encode"] = float((theirs.encode(acts) - trained.encode(acts)).abs().max())
    diffs["trained.decode"] = float((theirs(acts) - trained(acts)).abs().max())
    diffs["sae_lens_version"] = sae_lens.__version__  # type: ignore[assignment]
    print(json.dumps(diffs))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
