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
# # Steering and generation
#
# Hooks do not stop at single forward passes: during `generate` they run at every step, so an
# edit to the residual stream steers what the model writes, and `return_cache=True` records the
# activations of the generation itself, as it happened, edits included.
#
# We build a steering vector from the difference between contrasting prompts (activation
# addition), check that it moves the model's next-token distribution in the intended direction,
# generate with it, and capture the steered run live. Model: the embedded SmolLM2-135M.

# %%
import torch

from lmscope import HookedTransformer, viz

torch.set_grad_enabled(False)
model = HookedTransformer.from_pretrained("smollm2-135m")
cfg = model.cfg

# %% [markdown]
# ## A sentiment direction
#
# The steering vector is the mean residual stream (after block 6, at the last token) over a few
# positive phrases, minus the same over their negative twins. Everything else in the phrases is
# shared, so the difference isolates what changes: the sentiment.
#
# We tokenize without the BOS token here: the phrases are continuations, and the vector should
# not depend on where the sequence starts.

# %%
layer = 6
name = f"blocks.{layer}.hook_resid_post"
positive = ["I love this. It is wonderful and", "What a great, happy day, I feel", "This is the best thing ever, so"]
negative = ["I hate this. It is awful and", "What a terrible, sad day, I feel", "This is the worst thing ever, so"]


def last_resid(texts):
    _, cache = model.run_with_cache(texts, names_filter=name, padding_side="left", prepend_bos=False)
    return cache[name][:, -1].mean(0)


steering = last_resid(positive) - last_resid(negative)  # [d_model]
print("steering vector norm", steering.norm().item())


def steer(coefficient):
    def add(resid, hook):
        return resid + coefficient * steering

    return [(name, add)]

# %% [markdown]
# ## Does it move the next token?
#
# Before generating, a measurable check: on a neutral prompt, how do the log-probabilities of a
# few positive and negative words change as we add the vector with growing coefficients? The
# hook adds the vector at every position.

# %%
prompt = "I think that my neighbour is"
good_words = [" nice", " kind", " great", " wonderful", " friendly"]
bad_words = [" rude", " annoying", " terrible", " awful", " horrible"]
good_ids = [model.to_single_token(w) for w in good_words]
bad_ids = [model.to_single_token(w) for w in bad_words]
coefficients = [-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0]
sentiment = []
for c in coefficients:
    log_probs = model.run_with_hooks(prompt, prepend_bos=False, fwd_hooks=steer(c))[0, -1].log_softmax(-1)
    sentiment.append((log_probs[good_ids].logsumexp(-1) - log_probs[bad_ids].logsumexp(-1)).item())
for c, s in zip(coefficients, sentiment):
    print(f"coefficient {c:+.0f}: log P(positive words) - log P(negative words) = {s:+.2f}")
viz.line(torch.tensor(sentiment), x=coefficients, xlabel="steering coefficient", ylabel="log-odds positive vs negative", title="Steering the next token")

# %% [markdown]
# Between -4 and +4 the log-odds rise steadily with the coefficient, by several nats. Beyond
# that the effect saturates: at ±8 the vector dominates the residual stream and the model's
# prediction stops tracking it (and its text degrades).

# %%
middle = sentiment[1:-1]  # coefficients -4 ... +4
assert all(a < b for a, b in zip(middle, middle[1:]))  # monotone in the coefficient
assert middle[-1] - middle[0] > 3  # by a wide margin
assert sentiment[-1] < middle[-1] + 1 and sentiment[0] > middle[0] - 1  # saturated at ±8

# %% [markdown]
# ## Generating with the hook
#
# `model.hooks(fwd_hooks=...)` keeps hooks on for a block of code; `generate(fwd_hooks=...)`
# for one call. With the KV cache, the hook sees the prompt at the first step and one new
# position per later step, so the vector is added to every position exactly once.

# %%
plain = model.generate(prompt, 20, do_sample=False, verbose=False, prepend_bos=False)
with model.hooks(fwd_hooks=steer(4.0)):
    kind = model.generate(prompt, 20, do_sample=False, verbose=False, prepend_bos=False)
unkind = model.generate(prompt, 20, do_sample=False, verbose=False, prepend_bos=False, fwd_hooks=steer(-4.0))
print("plain :", plain)
print("+4    :", kind)
print("-4    :", unkind)
assert not any(hp.has_hooks() for hp in model.hook_dict.values())  # nothing left behind
assert len({plain, kind, unkind}) == 3  # greedy decoding, so the hook alone made the difference
# the same prompt, kept verbatim at the start of every output
assert all(text.startswith(prompt) for text in (plain, kind, unkind))


# %% [markdown]
# ## Live capture while generating
#
# `return_cache=True` stitches the activations of every generation step into one
# `ActivationCache` over the whole output, without a second forward pass, so it records the
# steered run itself. We check that against a plain `run_with_cache` of the output under the
# same hook, and look at how the steering vector's projection develops along the text.

# %%
out, live = model.generate(
    prompt, 20, do_sample=False, verbose=False, prepend_bos=False, fwd_hooks=steer(4.0),
    return_type="tokens", return_cache=True, names_filter=lambda n: n.endswith("resid_post") or n.endswith("pattern"),
)
with model.hooks(fwd_hooks=steer(4.0)):
    _, replay = model.run_with_cache(out, names_filter=lambda n: n.endswith("resid_post") or n.endswith("pattern"))
for key in [name, f"blocks.{cfg.n_layers - 1}.hook_resid_post", "blocks.10.attn.hook_pattern"]:
    torch.testing.assert_close(live[key], replay[key], atol=1e-4, rtol=1e-4)
print("live cache over", live[name].shape[1], "positions equals the replayed forward pass")

# %%
direction = steering / steering.norm()
out_str = model.to_str_tokens(out[0])
projection = torch.stack([live["resid_post", layer_][0] @ direction for layer_ in range(cfg.n_layers)])  # [layer, pos]
viz.heatmap(projection, x_labels=out_str, xlabel="position", ylabel="layer", title="Projection on the steering direction (steered run)", value_name="projection")

# %%
viz.colored_tokens(out_str, projection[layer], title=f"projection after block {layer}, per token")

# %% [markdown]
# ## Streaming
#
# `generate_stream` yields the tokens as they are produced, for interactive use; it takes the
# same arguments, hooks included, and ends with the same text as `generate`.

# %%
pieces = []
for step in model.generate_stream(prompt, 20, do_sample=False, prepend_bos=False, return_type="str", fwd_hooks=steer(4.0)):
    pieces.append(step[0])  # one string per sequence in the batch
print(len(pieces), "pieces:", pieces[:8], "...")
assert prompt + "".join(pieces) == kind
