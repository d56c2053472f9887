"""Induction heads form in a 2-layer attention-only transformer trained with lmscope.train on CPU.

Training data: random token sequences, each a random segment of L tokens (L uniform in 3 ..
seq_len/2, drawn per sequence) repeated to fill the sequence. After the first copy every token is
predictable, but only by finding the previous occurrence of the current token and copying what
came next (an induction head): L changes from sequence to sequence, so no fixed positional offset
works. On held-out sequences (fresh tokens, never trained on) the script measures:

- every head's induction score from the head detector (`lmscope.head_detector.detect_head`, "mul":
  the share of the head's attention that falls on the token after an earlier copy of the current
  token) on a 4-token segment repeated to fill the context; the first copy has nothing to look
  back to, so 1 - 4/seq_len (0.9375 at 64 tokens) is the most a head can score;
- the next-token loss on the first and on the repeated half of [segment, segment] sequences
  (distinct tokens): ln(d_vocab) for a model that knows nothing on the first half, near 0 on the
  second once induction works.

    python benchmarks/train_induction.py                 # the full run (about a minute on 2 cores)
    python benchmarks/train_induction.py --size quick    # what tests/benchmarks runs (seconds)

Figures of a run on the development machine are in docs/training.md.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import lmscope
from lmscope import HookedTransformer, HookedTransformerConfig
from lmscope.head_detector import detect_head
from lmscope.train import HookedTransformerTrainConfig
from lmscope.utils import lm_cross_entropy_loss

# name: (seq_len, d_model, n_heads, d_vocab, steps, lr)
SIZES = {
    "full": (64, 64, 4, 256, 3000, 3e-3),
    "quick": (32, 32, 2, 128, 400, 1e-2),
}


def model_config(
    seq_len: int, d_model: int, n_heads: int, d_vocab: int, seed: int = 0
) -> HookedTransformerConfig:
    """A 2-layer attention-only transformer with learned positions and no norms."""
    return HookedTransformerConfig(
        n_layers=2,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        n_ctx=seq_len,
        d_vocab=d_vocab,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="standard",
        seed=seed,
    )


def repeated_segment_tokens(n: int, seq_len: int, d_vocab: int, seed: int = 0) -> torch.Tensor:
    """[n, seq_len] ids: in each row a random segment of 3..seq_len/2 tokens repeated to fill it.

    Example:
        >>> repeated_segment_tokens(2, 8, 50)[0]     # e.g. a 3-token segment
        tensor([ 7, 31,  2,  7, 31,  2,  7, 31])
    """
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, d_vocab, (n, seq_len), generator=gen)
    lengths = torch.randint(3, seq_len // 2 + 1, (n, 1), generator=gen)
    return torch.gather(tokens, 1, torch.arange(seq_len)[None] % lengths)


def tiled(n: int, segment: int, copies: int, d_vocab: int, seed: int) -> torch.Tensor:
    """[n, segment * copies]: a segment of distinct random tokens repeated `copies` times."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.stack([torch.randperm(d_vocab, generator=gen)[:segment] for _ in range(n)])
    return rows.repeat(1, copies)


@torch.no_grad()
def measure(model: HookedTransformer, seed: int = 1) -> dict[str, float | str]:
    """Induction scores and first-half / repeated-half losses on held-out sequences (seeds other
    than training's)."""
    seq_len, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    scores = detect_head(model, tiled(64, 4, seq_len // 4, d_vocab, seed), "induction_head")
    halves = tiled(64, seq_len // 2, 2, d_vocab, seed + 1)
    per_token = lm_cross_entropy_loss(model(halves), halves, per_token=True)  # predicts t + 1
    half = seq_len // 2
    layer, head = divmod(int(scores.argmax()), model.cfg.n_heads)
    return {
        "best_induction_score": float(scores.max()),
        "best_head": f"L{layer}H{head}",
        "max_possible_score": 1 - 4 / seq_len,
        "layer0_best_score": float(scores[0].max()),
        "loss_first_half": float(per_token[:, : half - 1].mean()),
        "loss_repeated_half": float(per_token[:, half:].mean()),
    }


def run(
    size: str = "full",
    steps: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, float | str]:
    """Train a fresh model of `size` (SIZES) and measure it before and after."""
    seq_len, d_model, n_heads, d_vocab, default_steps, lr = SIZES[size]
    steps = default_steps if steps is None else steps
    model = HookedTransformer(model_config(seq_len, d_model, n_heads, d_vocab, seed))
    before = measure(model)
    data = repeated_segment_tokens(steps * batch_size, seq_len, d_vocab, seed=seed)
    config = HookedTransformerTrainConfig(
        num_epochs=1,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        warmup_steps=50,
        print_every=None,
        device="cpu",
        verbose=verbose,
    )
    start, cpu = time.perf_counter(), time.process_time()
    lmscope.train(model, config, data)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    model.eval()
    after = measure(model)
    return {
        "size": size,
        "steps": steps,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "tokens_seen": steps * batch_size * seq_len,
        "ln_d_vocab": math.log(d_vocab),
        **{
            f"before_{k}": v
            for k, v in before.items()
            if k not in ("best_head", "max_possible_score")
        },
        **after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--steps", type=int, default=None, help="default: the size's own")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    result = run(args.size, args.steps, seed=args.seed)
    width = max(map(len, result))
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


if __name__ == "__main__":
    main()
