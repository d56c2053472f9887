"""Speed of `lmscope.viz` on the embedded SmolLM2's full cache: each figure call, and rendering it
to a self-contained page, against the forward pass that made the cache (same process).

    .venv/bin/python benchmarks/viz_speed.py                     # an IOI-style prompt, 5 repeats
    .venv/bin/python benchmarks/viz_speed.py --repeat-prompt 8   # the prompt 8 times (longer)

The claim it checks: a viz call on the full cache returns in < 1 s. Times are medians over
`--repeats`, after a first call timed alone (`first ms`: dla_from_cache's first call computes the
per-head results, which the cache then keeps); `x forward` is the first call plus rendering over
the median `run_with_cache` time (the baseline). The `*_from_cache` calls include their analysis:
the logit lens unembeds every layer at every position, a [layer * pos, d_model] x [d_model, vocab]
product that grows with the prompt.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lmscope import HookedTransformer, viz

PROMPT = "When Mary and John went to the store, John gave a drink to"


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repeat-prompt", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = HookedTransformer.from_pretrained("smollm2-135m")
    tokens = model.to_tokens(" ".join([PROMPT] * args.repeat_prompt))
    str_tokens = model.to_str_tokens(tokens[0])
    model.run_with_cache(tokens)  # warm-up
    forward = median_time(lambda: model.run_with_cache(tokens), args.repeats)
    logits, cache = model.run_with_cache(tokens)
    pattern = cache.stack_activation("pattern")[:, 0]  # [layer, head, q, k]
    resid_norm = cache["resid_post", -1][0].norm(dim=-1)
    cases: dict[str, Callable[[], viz.Figure]] = {
        "attention_from_cache (all heads)": lambda: viz.attention_from_cache(cache, tokens),
        "attention_heads (tensor)": lambda: viz.attention_heads(pattern, str_tokens),
        "colored_tokens": lambda: viz.colored_tokens(str_tokens, resid_norm),
        "logit_lens_from_cache": lambda: viz.logit_lens_from_cache(cache, tokens, " Mary"),
        "dla_from_cache": lambda: viz.dla_from_cache(cache, " Mary", " John"),
        "heatmap [layer, pos]": lambda: viz.heatmap(
            cache.stack_activation("resid_post")[:, 0, :, 0]
        ),
        "patching_heatmap [3, layer, pos]": lambda: viz.patching_heatmap(
            torch.randn(3, model.cfg.n_layers, len(str_tokens)), str_tokens
        ),
        "line (10k steps)": lambda: viz.line(torch.randn(10_000).cumsum(0)),
    }
    print(
        f"SmolLM2-135M, {tokens.shape[1]} tokens, full cache ({len(cache.keys())} activations); "
        f"run_with_cache {forward * 1e3:.0f} ms (baseline); medians of {args.repeats}"
    )
    print(
        f"{'call':34} {'first ms':>9} {'median ms':>10} {'+ html ms':>10} {'x forward':>10} "
        f"{'page KB':>8}"
    )
    worst = 0.0
    for name, call in cases.items():
        start = time.perf_counter()
        fig = call()
        first = time.perf_counter() - start
        made = median_time(call, args.repeats)
        html = median_time(fig.to_html, args.repeats)
        worst = max(worst, first + html)
        print(
            f"{name:34} {first * 1e3:9.1f} {made * 1e3:10.1f} {html * 1e3:10.1f} "
            f"{(first + html) / forward:10.2f} {len(fig.to_html()) / 1e3:8.0f}"
        )
    print(f"slowest call + render: {worst:.3f} s ({'under' if worst < 1 else 'OVER'} the 1 s goal)")


if __name__ == "__main__":
    main()
