"""Command line: `python -m lmscope demo` runs the main job on the embedded model."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from lmscope.model import HookedTransformer


def _induction_scores(
    model: HookedTransformer, seq_len: int = 24, batch: int = 4, seed: int = 0
) -> torch.Tensor:
    """Mean attention from each token of a repeated random sequence to the token after its
    previous occurrence, per [layer, head]: high for induction heads."""
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randint(1000, model.cfg.d_vocab - 1000, (batch, seq_len), generator=gen)
    tokens = torch.cat([rand, rand], dim=1).to(model.W_E.device)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]  # [batch, head, q, k]
        stripe = pattern.diagonal(
            offset=1 - seq_len, dim1=-2, dim2=-1
        )  # q attends to q - seq_len + 1
        scores[layer] = stripe[..., 1:].mean(dim=(0, -1)).cpu()
    return scores


def demo(
    model_name: str = "smollm2-135m", prompt: str = "The capital of France is", top_k: int = 5
) -> None:
    """Load a model and print next-token predictions, a logit lens and the top induction heads."""
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model = HookedTransformer.from_pretrained(model_name)
    load_s = time.perf_counter() - t0
    cfg = model.cfg
    print(
        f"Loaded {cfg.model_name} ({cfg.original_architecture}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads / {cfg.n_key_value_heads} kv heads) in {load_s:.1f} s"
    )

    t0 = time.perf_counter()
    logits, cache = model.run_with_cache(prompt, names_filter=lambda n: "resid" in n)
    probs = logits[0, -1].softmax(-1)
    top = probs.topk(top_k)
    print(f"\nPrompt: {prompt!r}\nTop-{top_k} next tokens:")
    for p, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        print(f"  {model.to_string(idx)!r:>16}  {p:6.2%}")
    print()

    answer = int(top.indices[0])
    resid, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
    lens_logits = resid[:, 0] @ model.W_U + model.b_U  # [layers + 1, vocab]
    lens_probs = lens_logits.softmax(-1)
    ranks = (lens_logits > lens_logits[:, answer : answer + 1]).sum(-1)
    print(f"Logit lens for {model.to_string(answer)!r} (rank and probability after each layer):")
    print(f"  {'layer':>10} {'rank':>6} {'prob':>8}")
    for label, rank, prob in zip(
        labels, ranks.tolist(), lens_probs[:, answer].tolist(), strict=True
    ):
        print(f"  {label:>10} {rank:>6} {prob:8.2%}")
    run_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores = _induction_scores(model)
    best = scores.flatten().topk(5)
    print(
        "\nTop induction heads (attention to the token after the previous occurrence, repeated random tokens):"
    )
    for score, flat in zip(best.values.tolist(), best.indices.tolist(), strict=True):
        layer, head = divmod(flat, cfg.n_heads)
        print(f"  L{layer}H{head}  {score:.3f}")
    induction_s = time.perf_counter() - t0
    print(
        f"\nTimes: load {load_s:.1f} s, prompt + logit lens {run_s:.2f} s, induction scan {induction_s:.2f} s"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m lmscope` and the `lmscope` script."""
    parser = argparse.ArgumentParser(prog="lmscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="predictions, logit lens and induction heads on a model")
    p_demo.add_argument(
        "--model", default="smollm2-135m", help="alias, hub id, directory or .gguf file"
    )
    p_demo.add_argument("--prompt", default="The capital of France is")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.model, args.prompt)


if __name__ == "__main__":
    main()
