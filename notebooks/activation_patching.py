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
# # Activation patching with `lmscope.patching`
#
# Activation patching asks a causal question: *which activations carry the information that
# makes the model answer differently on two prompts?* Run the model on a corrupted prompt, copy
# one activation in from the clean prompt's run, and measure how far the output moves back to the
# clean answer. Doing it for every layer, position and head maps where the difference lives.
#
# `lmscope.patching` has TransformerLens's functions (`get_act_patch_resid_pre`,
# `get_act_patch_attn_head_out_all_pos`, `generic_activation_patch`, ...) with the same
# arguments and results. Under the names, each patched run starts at the patched layer from the
# cached corrupted residual stream, and several patches share one batched forward pass; the
# numbers equal a one-forward-per-patch loop.
#
# Task: indirect object identification on SmolLM2-135M (see `exploratory_analysis` for the
# story); here the point is the tool.

# %%
import torch

from lmscope import HookedTransformer, patching, viz

torch.set_grad_enabled(False)
model = HookedTransformer.from_pretrained("smollm2-135m")
cfg = model.cfg

# %% [markdown]
# ## Setup: a clean and a corrupted prompt, and a metric
#
# The corrupted prompt repeats the other name, which flips the right answer. The metric is the
# logit difference (` Mary` - ` John`) at the last position, normalised so that the clean run
# scores 1 and the corrupted run 0.

# %%
clean_prompt = "When John and Mary went to the shops, John gave the bag to"
corrupted_prompt = "When John and Mary went to the shops, Mary gave the bag to"
clean_tokens = model.to_tokens(clean_prompt)
corrupted_tokens = model.to_tokens(corrupted_prompt)
str_tokens = model.to_str_tokens(clean_tokens)
mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")


def logit_diff(logits):
    return (logits[:, -1, mary] - logits[:, -1, john]).mean()


clean_logits, clean_cache = model.run_with_cache(clean_tokens)
CLEAN = logit_diff(clean_logits).item()
CORRUPTED = logit_diff(model(corrupted_tokens)).item()


def ioi_metric(logits):
    return (logit_diff(logits) - CORRUPTED) / (CLEAN - CORRUPTED)


print(f"logit diff: clean {CLEAN:.2f}, corrupted {CORRUPTED:.2f}")
assert CLEAN > 2 and CORRUPTED < -2
assert abs(ioi_metric(clean_logits).item() - 1) < 1e-5

# %% [markdown]
# ## The residual stream: `get_act_patch_resid_pre`
#
# One patch per layer and position: `[layer, pos]`, 450 patched runs.

# %%
resid_pre = patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, ioi_metric)
viz.patching_heatmap(resid_pre, str_tokens, metric_name="logit diff recovered", title="resid_pre")

# %% [markdown]
# The prompts differ only at the second name (position 10); before it, patching changes nothing.
# At the second name, the difference is all there until the middle layers; then it moves to the
# last token.

# %%
S2, END = 10, len(str_tokens) - 1
assert resid_pre[:, :S2].abs().max() < 1e-4  # identical prefix: exactly no effect
assert resid_pre[0, S2] > 0.99  # at the input, the changed token is everything
assert resid_pre[-1, END] > 0.9 and resid_pre[-1, S2].abs() < 0.05
both = resid_pre[:, [S2, END]].sum(-1)
print("second name + last token, per layer:", [round(v, 2) for v in both.tolist()])
assert (both > 0.85).all()  # at every layer, these two positions hold (nearly) all of it

# %% [markdown]
# ## Heads: `get_act_patch_attn_head_out_all_pos`
#
# Patching a head's output `z` at every position at once: `[layer, head]`, 270 runs.

# %%
head_out = patching.get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, ioi_metric)
viz.patching_heatmap(head_out, metric_name="logit diff recovered", title="attn head output, all positions")

# %%
top = head_out.flatten().topk(6)
top_heads = [divmod(i.item(), cfg.n_heads) for i in top.indices]
print("top heads:", [f"L{layer}H{head} {v:.2f}" for (layer, head), v in zip(top_heads, top.values)])
assert top.values[0] > 0.1
assert head_out.sum() > 0.3  # the heads' effects add up to a good part of the behaviour

# %% [markdown]
# ## Zooming in with `generic_activation_patch`
#
# The full grids cost one run per cell. Once a few heads stand out, explicit rows
# (`index_df=`: a DataFrame, a tensor or a list of tuples) patch just those: here each top head's
# output at each position from the second name on, `(layer, pos, head)` rows with TransformerLens's
# `layer_pos_head_vector_patch_setter`.

# %%
rows = [(layer, pos, head) for layer, head in top_heads for pos in range(S2, END + 1)]
by_pos = patching.generic_activation_patch(
    model, corrupted_tokens, clean_cache, ioi_metric,
    patching.layer_pos_head_vector_patch_setter, "z", index_df=rows,
).reshape(len(top_heads), -1)
viz.heatmap(by_pos, x_labels=str_tokens[S2:], y_labels=[f"L{layer}H{head}" for layer, head in top_heads], xlabel="position", ylabel="head", title="Top heads' output, by position", value_name="recovered")

# %%
where = by_pos.abs().argmax(-1)
for (layer, head), w in zip(top_heads, where):
    print(f"L{layer}H{head} matters most at {str_tokens[S2 + w]!r} (position {S2 + w})")
assert all(S2 + w in (S2, END) for w in where)  # only the second name and the last token matter

# %% [markdown]
# ## What part of a head: queries, keys, values or pattern?
#
# A head's output depends on its attention pattern (from queries and keys: *where* it looks)
# and its values (*what* it moves). `get_act_patch_attn_head_all_pos_every` patches each part
# of every head; to keep the notebook fast we do the same for the top heads only, with
# `layer_head_vector_patch_setter` (q, k, v) and `layer_head_pattern_patch_setter` (pattern).
#
# SmolLM2 uses grouped-query attention: 3 key/value heads, each read by 3 query heads, so k and v
# are indexed by *kv head* (`head // 3`).

# %%
group = cfg.n_heads // cfg.n_key_value_heads
parts = {}
for name, setter, head_of in [
    ("q", patching.layer_head_vector_patch_setter, lambda h: h),
    ("k", patching.layer_head_vector_patch_setter, lambda h: h // group),
    ("v", patching.layer_head_vector_patch_setter, lambda h: h // group),
    ("pattern", patching.layer_head_pattern_patch_setter, lambda h: h),
]:
    rows = [(layer, head_of(head)) for layer, head in top_heads]
    parts[name] = patching.generic_activation_patch(model, corrupted_tokens, clean_cache, ioi_metric, setter, name, index_df=rows)
parts["output (z)"] = torch.stack([head_out[layer, head] for layer, head in top_heads])
table = torch.stack(list(parts.values()), dim=1)  # [head, part]
viz.heatmap(table, x_labels=list(parts), y_labels=[f"L{layer}H{head}" for layer, head in top_heads], title="Which part of each top head carries the difference", value_name="recovered")

# %%
for (layer, head), row in zip(top_heads, table):
    print(f"L{layer}H{head}: " + ", ".join(f"{k} {v:+.2f}" for k, v in zip(parts, row.tolist())))

# %% [markdown]
# Two mechanisms show up. The top head carries the difference in its *values*: it attends to the
# same place in both runs, but what it reads there (the residual stream at the second name) has
# changed. The head that matters at the second name itself carries it in its *query and
# pattern*: in the clean run " John" repeats, and where the head looks changes.

# %%
q_, k_, v_, pattern_, z_ = range(5)
assert table[0, v_] > 0.8 * table[0, z_]  # top head: values
at_s2 = [i for i, w in enumerate(where) if S2 + w == S2]
assert at_s2, "a top head acts at the second name"
for i in at_s2:
    assert table[i, pattern_] > 0.7 * table[i, z_] and table[i, q_] > 0.7 * table[i, z_]  # queries / pattern

# %% [markdown]
# ## Checking the shortcut
#
# `generic_activation_patch` starts each run at the patched layer and batches patches. The
# results must equal the plain loop of one full forward pass per patch, which we run for one
# row of the grid with a hook of our own.

# %%
layer = top_heads[0][0]


def patch_position(resid, hook, pos):
    resid[:, pos] = clean_cache[hook.name][:, pos]
    return resid


by_hand = torch.tensor([
    ioi_metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", lambda r, hook, p=p: patch_position(r, hook, p))])).item()
    for p in range(len(str_tokens))
])
torch.testing.assert_close(by_hand, resid_pre[layer], atol=1e-4, rtol=1e-4)
print(f"layer {layer}: the loop of full forward passes equals get_act_patch_resid_pre")
