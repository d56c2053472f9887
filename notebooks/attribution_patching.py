# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Attribution patching: activation patching from one backward pass
#
# Activation patching costs one forward pass per patched activation. *Attribution patching*
# (Nanda, 2023) replaces each of those runs by a first-order Taylor estimate around the
# corrupted run:
#
# `metric(patched) - metric(corrupted) ≈ (a_clean - a_corrupted) · ∂metric/∂a`
#
# One forward and one backward pass on the corrupted prompt give the gradient at every
# activation at once, so every patch of every kind costs the same two passes. The estimate is
# good where the metric is close to linear in the activation, and poor for large changes through
# saturated softmaxes and norms. We compute it by hand with hooks (as TransformerLens's demo
# does), check it against `lmscope.analysis.attribution`, and compare it with exact patching.
# Model: SmolLM2-135M, on the indirect-object task of the other notebooks.

# %%
import time

import einops
import torch

from lmscope import ActivationCache, HookedTransformer, patching, viz
from lmscope.analysis import attribution

model = HookedTransformer.from_pretrained("smollm2-135m")
cfg = model.cfg

clean_tokens = model.to_tokens("When John and Mary went to the shops, John gave the bag to")
corrupted_tokens = model.to_tokens("When John and Mary went to the shops, Mary gave the bag to")
str_tokens = model.to_str_tokens(clean_tokens)
mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
S2, END = 10, len(str_tokens) - 1


def logit_diff(logits):
    return (logits[:, -1, mary] - logits[:, -1, john]).mean()


with torch.no_grad():
    CLEAN = logit_diff(model(clean_tokens)).item()
    CORRUPTED = logit_diff(model(corrupted_tokens)).item()


def ioi_metric(logits):
    return (logit_diff(logits) - CORRUPTED) / (CLEAN - CORRUPTED)


print(f"logit diff: clean {CLEAN:.2f}, corrupted {CORRUPTED:.2f}")
assert CLEAN > 2 and CORRUPTED < -2

# %% [markdown]
# ## Activations and gradients with hooks
#
# A forward hook stores each activation; a backward hook (`dir="bwd"`) stores the gradient of
# the metric with respect to it. Both end up in `ActivationCache`s, so the cache's analysis
# methods (`stack_head_results`, `decompose_resid`, ...) work on gradients too.
#
# `set_use_attn_result(True)` turns on each head's own output (`hook_result`), so its gradient is
# cached too. Hook points behind a switch that stays off (split q/k/v inputs, `attn_in`,
# `mlp_in`) are left out of the filter: a hook there would never fire, and adding one is an
# error, as in TransformerLens.

# %%
def cache_fwd_and_bwd(tokens):
    model.reset_hooks()
    acts, grads = {}, {}

    def forward_hook(act, hook):
        acts[hook.name] = act.detach()

    def backward_hook(grad, hook):
        grads[hook.name] = grad.detach()

    keep = lambda name: not name.endswith(("_input", "attn_in", "mlp_in"))  # noqa: E731
    model.add_hook(keep, forward_hook, "fwd")
    model.add_hook(keep, backward_hook, "bwd")
    value = ioi_metric(model(tokens))
    value.backward()
    model.reset_hooks()
    return value.item(), ActivationCache(acts, model), ActivationCache(grads, model)


model.set_use_attn_result(True)
start = time.perf_counter()
clean_value, clean_cache, _ = cache_fwd_and_bwd(clean_tokens)
corrupted_value, corrupted_cache, corrupted_grads = cache_fwd_and_bwd(corrupted_tokens)
attribution_seconds = time.perf_counter() - start
print(f"metric: clean {clean_value:.3f}, corrupted {corrupted_value:.3f}; {len(corrupted_grads)} gradients cached")
assert abs(clean_value - 1) < 1e-4 and abs(corrupted_value) < 1e-4
model.set_use_attn_result(False)  # per-head outputs are not needed from here on
model.zero_grad(set_to_none=True)
torch.set_grad_enabled(False)

# %% [markdown]
# ## Attribution of every head's output
#
# A head's output is its `z` times `W_O`; `stack_head_results` gives `[layer * head, batch, pos,
# d_model]` for activations and gradients alike. The estimate of patching a head (at all
# positions) is the sum over positions of `gradient · (clean - corrupted)`.

# %%
def attr_head_out():
    clean = clean_cache.stack_head_results(-1)
    corrupted = corrupted_cache.stack_head_results(-1)
    grad = corrupted_grads.stack_head_results(-1)
    attr = einops.reduce(grad * (clean - corrupted), "component batch pos d_model -> component", "sum")
    return einops.rearrange(attr, "(layer head) -> layer head", layer=cfg.n_layers)


head_attr = attr_head_out()
viz.dla_heads(head_attr, top_k=8, title="Attribution patching: head outputs", value_name="estimated recovery")

# %% [markdown]
# `lmscope.analysis.attribution` does the same in one call per kind of activation, indexed like
# `lmscope.patching`'s results (`get_attr_patch_attn_head_out_all_pos` mirrors
# `get_act_patch_attn_head_out_all_pos`). Patching `z` and patching the head's result are the
# same patch (the result is linear in `z`), so the two estimates agree.

# %%
with torch.enable_grad():
    library = attribution.get_attr_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, ioi_metric)
torch.testing.assert_close(library, head_attr, atol=1e-4, rtol=1e-3)

# %% [markdown]
# ## Against exact activation patching
#
# The exact numbers cost one forward pass per head: 270 runs, against the two passes above.

# %%
start = time.perf_counter()
head_exact = patching.get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, ioi_metric)
exact_seconds = time.perf_counter() - start
print(f"exact patching: {exact_seconds:.1f} s for 270 heads; attribution: {attribution_seconds:.1f} s for everything")

head_labels = [f"L{layer}H{head}" for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
layer_groups = [f"layers {10 * (layer // 10)}-{10 * (layer // 10) + 9}" for layer in range(cfg.n_layers) for _ in range(cfg.n_heads)]
viz.scatter(head_exact, head_attr, labels=head_labels, groups=layer_groups, diagonal=True, xlabel="activation patching (exact)", ylabel="attribution patching (estimate)", title="Head outputs: estimate vs exact")

# %%
r_heads = torch.corrcoef(torch.stack([head_exact.flatten(), head_attr.flatten()]))[0, 1].item()
top_exact = set(head_exact.flatten().topk(5).indices.tolist())
top_attr = set(head_attr.flatten().topk(5).indices.tolist())
print(f"correlation over heads: {r_heads:.3f}; top-5 heads shared: {len(top_exact & top_attr)}")
assert r_heads > 0.8  # for heads, the linear estimate is good
assert len(top_exact & top_attr) >= 3  # and finds the same important heads

# %% [markdown]
# ## Where the estimate fails: the residual stream
#
# Patching the residual stream at the changed token replaces the whole input: a large change,
# far from the linear regime. We compare at the positions that differ (from the second name on)
# using `get_attr_patch_resid_pre` and exact patching on the same rows.

# %%
with torch.enable_grad():
    resid_attr = attribution.get_attr_patch_resid_pre(model, corrupted_tokens, clean_cache, ioi_metric)[:, S2:]
rows = [(layer, pos) for layer in range(cfg.n_layers) for pos in range(S2, END + 1)]
resid_exact = patching.generic_activation_patch(
    model, corrupted_tokens, clean_cache, ioi_metric, patching.layer_pos_patch_setter, "resid_pre", index_df=rows
).reshape(cfg.n_layers, -1)
pos_labels = [f"L{layer} {str_tokens[pos]!r}" for layer, pos in rows]
viz.scatter(resid_exact, resid_attr, labels=pos_labels, groups=[str_tokens[pos] + f" ({pos})" for _, pos in rows], diagonal=True, xlabel="activation patching (exact)", ylabel="attribution patching (estimate)", title="resid_pre: estimate vs exact")

# %%
err_s2 = (resid_attr[:, 0] - resid_exact[:, 0]).abs()
print(f"at the second name, layer 0: exact {resid_exact[0, 0]:.2f}, estimate {resid_attr[0, 0]:.2f}")
print(f"mean error: second name {err_s2.mean():.2f}; heads {(head_attr - head_exact).abs().mean():.3f}")
assert resid_exact[0, 0] > 0.99  # exact: patching the changed token restores everything
assert err_s2.mean() > 5 * (head_attr - head_exact).abs().mean()  # the big patch is where it fails

# %% [markdown]
# ## Attention attribution
#
# Without any patching: `pattern * ∂metric/∂pattern` says which attention edges the metric is
# most sensitive to in the run (here the corrupted one). Summed over edges it ranks heads; the
# strongest edges of the top head show what it reads.

# %%
patterns = torch.stack([corrupted_cache["pattern", layer][0] for layer in range(cfg.n_layers)])
pattern_grads = torch.stack([corrupted_grads["pattern", layer][0] for layer in range(cfg.n_layers)])
edge_attr = patterns * pattern_grads  # [layer, head, query, key]
head_total = edge_attr.abs().sum((-1, -2))
layer, head = divmod(head_total.flatten().argmax().item(), cfg.n_heads)
print(f"most sensitive head: L{layer}H{head}")
corrupted_str = model.to_str_tokens(corrupted_tokens)
viz.heatmap(edge_attr[layer, head], x_labels=corrupted_str, y_labels=corrupted_str, xlabel="key", ylabel="query", title=f"Attention attribution of L{layer}H{head}", value_name="attribution")

# %%
q, k = divmod(edge_attr[layer, head].abs().flatten().argmax().item(), len(corrupted_str))
print(f"its strongest edge: {corrupted_str[q]!r} ({q}) -> {corrupted_str[k]!r} ({k})")
assert q == END  # the decision is made at the last token
