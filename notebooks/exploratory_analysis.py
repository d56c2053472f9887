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
# # Exploratory analysis: indirect object identification in SmolLM2
#
# "When John and Mary went to the shops, John gave the bag to" → " Mary". To finish such a
# sentence a model has to find the names, notice which one is repeated, and say the other one.
# [Wang et al. (2022)](https://arxiv.org/abs/2211.00593) reverse-engineered this *indirect
# object identification* (IOI) circuit in GPT-2 Small: duplicate-token and induction heads mark
# the repeated name, S-inhibition heads carry that to the end, and name-mover heads copy the
# other name to the output.
#
# Here we ask the same questions of SmolLM2-135M, with the quick, general tools of exploratory
# analysis (after TransformerLens's Exploratory Analysis Demo): logit difference, direct logit
# attribution per layer and head, the logit lens, activation patching by layer, position and
# head, and head scores on synthetic text. We assert what we find, so the story stays true.

# %%
import einops
import torch

from lmscope import HookedTransformer, patching, utils, viz
from lmscope.head_detector import detect_head

torch.set_grad_enabled(False)
model = HookedTransformer.from_pretrained("smollm2-135m")
cfg = model.cfg

# %% [markdown]
# ## The task
#
# First, can the model do it at all? `test_prompt`'s table shows where the right answer ranks.

# %%
viz.prompt_table_from_model("After John and Mary went to the store, John gave a bottle of milk to", " Mary", model, top_k=5)

# %% [markdown]
# Eight prompts: four sentences, each with either name as the indirect object. Pairing every
# prompt with its swapped twin cancels any preference for one name over the other. All names
# are single tokens and sit at the same positions in every prompt.

# %%
prompt_format = [
    "When John and Mary went to the shops,{} gave the bag to",
    "When Tom and James went to the park,{} gave the ball to",
    "When Dan and Sid went to the shops,{} gave an apple to",
    "After Martin and Amy went to the park,{} gave a drink to",
]
names = [(" Mary", " John"), (" Tom", " James"), (" Dan", " Sid"), (" Martin", " Amy")]
prompts, answers = [], []
for template, (a, b) in zip(prompt_format, names):
    for io, s in [(a, b), (b, a)]:
        answers.append((io, s))
        prompts.append(template.format(s))  # the subject is repeated; the answer is the other name
answer_tokens = torch.tensor([[model.to_single_token(io), model.to_single_token(s)] for io, s in answers])
tokens = model.to_tokens(prompts)
str_tokens = model.to_str_tokens(tokens[0])
print(prompts[0], "->", answers[0])
print(str_tokens)
IO_POS, S1_POS, S2_POS, END = 4, 2, 10, tokens.shape[1] - 1  # in prompt 0: Mary, John, John, "to"
assert str_tokens[IO_POS] == " Mary" and str_tokens[S1_POS] == str_tokens[S2_POS] == " John"

# %%
logits, cache = model.run_with_cache(tokens)


def logit_diff(logits, per_prompt=False):
    final = logits[:, -1]
    diff = final.gather(-1, answer_tokens[:, :1])[:, 0] - final.gather(-1, answer_tokens[:, 1:])[:, 0]
    return diff if per_prompt else diff.mean()


per_prompt = logit_diff(logits, per_prompt=True)
clean_ld = per_prompt.mean().item()
print("logit difference per prompt:", [round(v, 2) for v in per_prompt.tolist()])
print(f"mean {clean_ld:.2f}: the right name is e^{clean_ld:.1f} = {torch.exp(per_prompt.mean()).item():.0f}x likelier than the wrong one")
assert (per_prompt > 1).all() and clean_ld > 3

# %% [markdown]
# ## Direct logit attribution
#
# The logits are the final residual stream, normalised, times the unembedding. The residual
# stream is a sum of what every component wrote, and the normalisation is (for a fixed input) a
# scale, so the logit difference splits into one term per component: its output, scaled by the
# final norm's scale, dotted with the *logit difference direction* `W_U[:, IO] - W_U[:, S]`.
# (SmolLM2 uses RMSNorm without centring, so this split is exact.)

# %%
answer_directions = model.tokens_to_residual_directions(answer_tokens)  # [batch, 2, d_model]
ld_directions = answer_directions[:, 0] - answer_directions[:, 1]


def residual_stack_to_logit_diff(stack):
    scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
    return einops.einsum(scaled, ld_directions, "... batch d_model, batch d_model -> ...") / len(prompts)


final_resid = cache["resid_post", -1][:, -1]
reconstructed = residual_stack_to_logit_diff(final_resid)
print(f"from the residual stream: {reconstructed.item():.4f}; from the logits: {clean_ld:.4f}")
assert abs(reconstructed.item() - clean_ld) < 1e-3

# %% [markdown]
# ### The logit lens: when does the answer appear?
#
# Reading the residual stream after each layer as if it were the last (`accumulated_resid`)
# shows when the model "knows" the answer.

# %%
accumulated, acc_labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
lens = residual_stack_to_logit_diff(accumulated)
viz.line(lens, x=list(range(len(acc_labels))), xlabel="residual stream (pre / mid of each layer)", ylabel="logit diff", title="Logit difference through the layers")

# %%
layer_of = lambda label: int(label.split("_")[0]) if label[0].isdigit() else cfg.n_layers  # noqa: E731
half = [v for v, lab in zip(lens, acc_labels) if layer_of(lab) < cfg.n_layers // 2]
print(f"best logit diff in the first half of the model: {max(half):.2f}; at the end: {lens[-1]:.2f}")
assert max(half) < 0.25 * lens[-1]  # nothing until the second half of the model
assert abs(lens[-1].item() - clean_ld) < 1e-3

# %% [markdown]
# The logit lens of one prompt at every position, for the token " Mary": its rank in the
# model's prediction as each layer adds its part.

# %%
viz.logit_lens_from_cache(cache, tokens, " Mary", kind="rank", k=5)

# %% [markdown]
# ### Which layers write the answer?

# %%
per_layer, layer_labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
per_layer_ld = residual_stack_to_logit_diff(per_layer)
viz.bars(per_layer_ld, layer_labels, title="Direct logit attribution per component", xlabel="logit diff")

# %%
attn_total = sum(v for v, lab in zip(per_layer_ld, layer_labels) if lab.endswith("attn_out"))
mlp_total = sum(v for v, lab in zip(per_layer_ld, layer_labels) if lab.endswith("mlp_out"))
print(f"attention layers write {attn_total:.2f}, MLP layers {mlp_total:.2f}")
assert attn_total > mlp_total  # moving a name around is attention's job

# %% [markdown]
# ### Which heads?

# %%
per_head = cache.stack_head_results(layer=-1, pos_slice=-1)
per_head_ld = einops.rearrange(residual_stack_to_logit_diff(per_head), "(layer head) -> layer head", layer=cfg.n_layers)
viz.dla_heads(per_head_ld, top_k=10, title="Direct logit attribution per head", value_name="logit diff")

# %%
top = per_head_ld.flatten().topk(5)
name_movers = [divmod(i.item(), cfg.n_heads) for i in top.indices]
print("top heads:", [f"L{layer}H{head} {v:+.2f}" for (layer, head), v in zip(name_movers, top.values)])
assert all(layer >= cfg.n_layers // 2 for layer, _ in name_movers)  # all in the second half
assert top.values[:3].sum() > 0.25 * clean_ld  # three heads write a quarter of the answer

# %% [markdown]
# In GPT-2 Small the top heads here are *name movers*: they attend from the last token to the
# indirect object and copy it, raising its logit. A head can also help the other way: attend to
# the repeated name and write its negation, lowering the subject's logit. We split each head's
# direct effect into its two terms, `+ out · W_U[IO]` and `- out · W_U[S]`, and look at where it
# attends from the last token (averaged over the eight prompts; the attention view shows the first).

# %%
patterns = torch.stack([cache["pattern", layer][0, head] for layer, head in name_movers])
viz.attention_heads(patterns, str_tokens, head_labels=[f"L{layer}H{head}" for layer, head in name_movers], title="Top heads by direct logit attribution")

# %%
scaled_heads = cache.apply_ln_to_stack(per_head, layer=-1, pos_slice=-1)  # [layer * head, batch, d_model]
io_part = einops.einsum(scaled_heads, answer_directions[:, 0], "c batch d, batch d -> c") / len(prompts)
s_part = -einops.einsum(scaled_heads, answer_directions[:, 1], "c batch d, batch d -> c") / len(prompts)
io_part, s_part = (x.reshape(cfg.n_layers, cfg.n_heads) for x in (io_part, s_part))


def attention_to(layer, head, positions):
    # attention from the last token to each prompt's own IO / S positions, averaged over prompts
    pattern = cache["pattern", layer][:, head, -1]  # [batch, key]
    return torch.stack([pattern[b, positions[b]].sum() for b in range(len(prompts))]).mean().item()


io_pos = [IO_POS if b % 2 == 0 else S1_POS for b in range(len(prompts))]  # the names swap places
s_pos = [[S1_POS, S2_POS] if b % 2 == 0 else [IO_POS, S2_POS] for b in range(len(prompts))]
for layer, head in name_movers[:3]:
    mean_pattern = cache["pattern", layer][:, head, -1].mean(0)
    print(
        f"L{layer}H{head}: raises IO by {io_part[layer, head]:+.2f}, lowers S by {s_part[layer, head]:+.2f}; "
        f"attention to IO {attention_to(layer, head, io_pos):.2f}, to S {attention_to(layer, head, s_pos):.2f}, "
        f"most to {str_tokens[mean_pattern.argmax()]!r}"
    )
torch.testing.assert_close(io_part + s_part, per_head_ld)  # the two terms are the whole effect

# %% [markdown]
# The top head is not a name mover: it attends to the *repeated* name and works by pushing that
# name down, not by raising the other one. In SmolLM2 this subject suppression is the largest
# single contribution to getting the answer right. The second head attends to the last token
# itself and raises the indirect object: by the last layer the answer is already in that
# position's residual stream, and this head amplifies it.

# %%
(l0, h0), (l1, h1) = name_movers[:2]
assert attention_to(l0, h0, s_pos) > 3 * attention_to(l0, h0, io_pos)  # it reads the subject
assert s_part[l0, h0] > 2 * io_part[l0, h0] and s_part[l0, h0] > 1  # and lowers it
assert cache["pattern", l1][:, h1, -1].mean(0).argmax() == END  # the second reads the last token
assert io_part[l1, h1] > 1 and io_part[l1, h1] > s_part[l1, h1]  # and raises the answer

# %% [markdown]
# ## Activation patching
#
# Direct logit attribution only sees the last step. Activation patching finds where the
# information lives on the way: run the *corrupted* prompts (each prompt's twin, so the right
# answer flips), copy in one activation from the clean run, and measure how much of the clean
# logit difference comes back (1 = all, 0 = none).
#
# Patching is one forward pass per patch, so we use the first pair of prompts only.

# %%
clean_tokens = tokens[:2]
corrupted_tokens = clean_tokens.flip(0)  # the twins: the other name is repeated
pair_answers = answer_tokens[:2]


def pair_logit_diff(logits):
    final = logits[:, -1]
    return (final.gather(-1, pair_answers[:, :1]) - final.gather(-1, pair_answers[:, 1:])).mean()


_, clean_cache = model.run_with_cache(clean_tokens)
CLEAN = pair_logit_diff(model(clean_tokens)).item()
CORRUPTED = pair_logit_diff(model(corrupted_tokens)).item()


def ioi_metric(logits):
    return (pair_logit_diff(logits) - CORRUPTED) / (CLEAN - CORRUPTED)


print(f"clean {CLEAN:.2f}, corrupted {CORRUPTED:.2f}")
assert CLEAN > 2 and CORRUPTED < -2

# %% [markdown]
# ### The residual stream, by layer and position
#
# The prompts of a pair differ only from the second name on, so the residual stream before it is
# identical in both runs and patching there does nothing. We patch every layer at the positions
# from the comma (9) to the end, through `generic_activation_patch` with explicit rows.

# %%
rows = [(layer, pos) for layer in range(cfg.n_layers) for pos in range(9, END + 1)]
flat = patching.generic_activation_patch(
    model, corrupted_tokens, clean_cache, ioi_metric, patching.layer_pos_patch_setter, "resid_pre", index_df=rows
)
resid_patch = torch.zeros(cfg.n_layers, END + 1)
resid_patch[:, 9:] = flat.reshape(cfg.n_layers, -1)
viz.patching_heatmap(resid_patch, str_tokens, metric_name="logit diff recovered", title="Patching resid_pre")

# %%
handover = int((resid_patch[:, END] > resid_patch[:, S2_POS]).float().argmax())
print("the final token takes over from the second name at layer", handover)
print("second name:", [round(v, 2) for v in resid_patch[:, S2_POS].tolist()])
print("final token:", [round(v, 2) for v in resid_patch[:, END].tolist()])
assert resid_patch[: handover - 3, S2_POS].min() > 0.9  # before: all at the second name
assert resid_patch[handover + 1 :, END].min() > 0.85  # after: (almost) all at the end
assert resid_patch[-1, S2_POS].abs() < 0.05
assert cfg.n_layers // 2 <= handover <= cfg.n_layers - 3  # late: layers 20-24 move it

# %% [markdown]
# ### Attention and MLP layers at the final position

# %%
last_rows = [(layer, END) for layer in range(cfg.n_layers)]
attn_last = patching.generic_activation_patch(model, corrupted_tokens, clean_cache, ioi_metric, patching.layer_pos_patch_setter, "attn_out", index_df=last_rows)
mlp_last = patching.generic_activation_patch(model, corrupted_tokens, clean_cache, ioi_metric, patching.layer_pos_patch_setter, "mlp_out", index_df=last_rows)
viz.line(torch.stack([attn_last, mlp_last]), labels=["attention output", "MLP output"], xlabel="layer", ylabel="logit diff recovered", title="Patching layer outputs at the final token")

# %%
print(f"attention: {attn_last.sum():.2f} in total, MLPs: {mlp_last.sum():.2f}")
assert attn_last.sum() > mlp_last.sum()

# %% [markdown]
# ### Heads
#
# Patching each head's output (`z`, all positions at once) finds the heads that matter anywhere,
# not only those that write to the logits directly.

# %%
head_patch = patching.get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, ioi_metric)
viz.patching_heatmap(head_patch, metric_name="logit diff recovered", title="Patching each head's output")

# %%
top_patch = head_patch.flatten().topk(10)
important = [divmod(i.item(), cfg.n_heads) for i in top_patch.indices]
print("top heads by patching:", [f"L{layer}H{head} {v:.2f}" for (layer, head), v in zip(important, top_patch.values)])
overlap = set(important) & set(name_movers)
print("also top by direct logit attribution:", sorted(overlap))
assert top_patch.values[0] > 0.1
assert len(overlap) >= 1  # patching and DLA agree on at least one name mover

# %% [markdown]
# ## What kind of heads are these?
#
# Head types have signatures on synthetic text. On random tokens repeated twice, a
# *previous-token* head attends one position back, a *duplicate-token* head to the earlier copy
# of the current token, and an *induction* head to the token after that copy. We score every
# head with hooks on its attention pattern, as in TransformerLens's demo.

# %%
seq_len, batch_size = 40, 4
torch.manual_seed(0)
random_tokens = torch.randint(1000, 10000, (batch_size, seq_len))
repeated = torch.cat([torch.full((batch_size, 1), model.tokenizer.bos_token_id), random_tokens, random_tokens], dim=1)

scores = {kind: torch.zeros(cfg.n_layers, cfg.n_heads) for kind in ["previous token", "duplicate token", "induction"]}
offsets = {"previous token": 1, "duplicate token": seq_len, "induction": seq_len - 1}


def score_hook(pattern, hook):
    for kind, offset in offsets.items():
        stripe = pattern.diagonal(offset=-offset, dim1=-2, dim2=-1)
        if kind != "previous token":
            stripe = stripe[..., -(seq_len - 1) :]  # the second copy only
        scores[kind][hook.layer()] = stripe.mean((0, -1))


model.run_with_hooks(repeated, return_type=None, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), score_hook)])
viz.page(*[viz.heatmap(s, xlabel="head", ylabel="layer", title=f"{kind} score", color="sequential", vmin=0, vmax=1) for kind, s in scores.items()], title="Head scores on repeated random tokens")

# %%
for kind, s in scores.items():
    best = s.flatten().topk(3)
    print(f"{kind:16s}", [f"L{i // cfg.n_heads}H{i % cfg.n_heads} {v:.2f}" for i, v in zip(best.indices.tolist(), best.values)])
    assert best.values[0] > 0.6, kind  # every kind exists, with a clear best head
assert scores["induction"].flatten().argmax() != scores["duplicate token"].flatten().argmax()

# %% [markdown]
# lmscope's `detect_head` (TransformerLens's head detector) scores any text against a built-in or
# custom pattern. Its default score is the share of a head's attention, over *every* query
# position, that falls on the pattern (with `exclude_bos`, attention to BOS does not count), so
# it ranks the induction heads a little differently from our second-copy average; its top head is
# a strong induction head by our score too.

# %%
detected = detect_head(model, repeated, "induction_head", exclude_bos=True)
d_layer, d_head = divmod(detected.flatten().argmax().item(), cfg.n_heads)
print(f"detect_head's top induction head: L{d_layer}H{d_head} ({detected.max():.2f}); our score for it: {scores['induction'][d_layer, d_head]:.2f}")
assert scores["induction"][d_layer, d_head] > 0.4

# %% [markdown]
# Which kinds do the heads that matter for IOI belong to? The heads of layers 23 and 29, which
# write the answer, are none of the three: they attend by name, not by position or repetition.
# Among the earlier heads that patching flags is an induction head (L17H4), as in GPT-2 Small,
# where induction and duplicate-token heads mark the second name as a repeat.

# %%
def kind_of(layer, head, threshold=0.3):
    kinds = [k for k, s in scores.items() if s[layer, head] > threshold]
    return ", ".join(kinds) or "-"


for layer, head in important:
    print(f"L{layer}H{head}: patching {head_patch[layer, head]:.2f}, DLA {per_head_ld[layer, head]:+.2f}, kind: {kind_of(layer, head)}")
early = [(layer, head) for layer, head in important[:5] if layer < 20]
assert any(kind_of(layer, head) != "-" for layer, head in early)  # an induction / duplicate head among them
assert all(kind_of(layer, head) == "-" for layer, head in name_movers[:2])

# %% [markdown]
# ## Does the model repair itself?
#
# Knocking out a head and watching the output is the bluntest test. In GPT-2 Small, zeroing the
# top name mover at the final token costs much less than its direct logit attribution: later
# "backup" heads change their behaviour and make up part of the loss (self-repair). We zero
# SmolLM2's top head, L23H3, at the final token and compare the fall in logit difference with its
# direct effect.

# %%
(nm_layer, nm_head), nm_dla = name_movers[0], top.values[0].item()


def ablate_top_head(z, hook):
    z[:, -1, nm_head] = 0.0
    return z


ablated_ld = logit_diff(model.run_with_hooks(tokens, fwd_hooks=[(utils.get_act_name("z", nm_layer), ablate_top_head)])).item()
drop = clean_ld - ablated_ld
print(f"L{nm_layer}H{nm_head}: direct effect {nm_dla:.2f}; logit diff {clean_ld:.2f} -> {ablated_ld:.2f}, a fall of {drop:.2f}")

# %% [markdown]
# Here there is no self-repair: the logit difference falls by the head's whole direct effect (a
# little more), so nothing downstream compensates for L23H3.
# Whether the later layers hold no backup for this job, or the backup only answers to other
# ablations (mean ablation, or ablating the head at every position), is the next experiment.

# %%
assert 0.8 * nm_dla < drop < 1.3 * nm_dla  # the fall matches the direct effect: no compensation
