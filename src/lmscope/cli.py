"""Command line: `python -m lmscope demo` runs the main job on the embedded model;
`--html out.html` also writes its tokens, logit lens and induction heads as one `lmscope.viz` page.
`python -m lmscope harvest` stores activations over a dataset (docs/harvest.md).
`python -m lmscope serve` starts the local web explorer (docs/serve.md).

Bad input (an unknown or unreachable model, an empty or too long prompt) prints one line,
`lmscope: error: <what is wrong and what to do>`, and exits with status 2, as argparse does for
bad options; anything unexpected still shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from lmscope import viz
from lmscope.cache import ActivationCache
from lmscope.model import HookedTransformer


class UsageError(Exception):
    """Bad command-line input: `main` prints it as one `lmscope: error:` line and exits 2."""


def _load(model_name: str) -> HookedTransformer:
    """`HookedTransformer.from_pretrained(model_name)`; a name that does not load is a UsageError
    (loading raises ValueError for bad names and checkpoints, OSError for missing files and an
    unreachable hub), with the loader's message, which says what to do."""
    if not model_name.strip():
        raise UsageError(
            "--model is empty; pass an alias (e.g. smollm2-135m), a hub id, a directory or a .gguf file"
        )
    try:
        return HookedTransformer.from_pretrained(model_name)
    except (ValueError, OSError) as err:
        raise UsageError(f"cannot load --model {model_name!r}: {err}") from err


def _prompt_tokens(model: HookedTransformer, prompt: str) -> torch.Tensor:
    """The prompt's tokens [1, pos], or a UsageError saying why the prompt cannot run."""
    try:
        tokens = model.to_tokens(prompt)
    except ValueError as err:
        raise UsageError(f"--prompt {prompt!r}: {err}") from err
    if tokens.shape[1] > model.cfg.n_ctx:
        raise UsageError(
            f"--prompt is {tokens.shape[1]} tokens, more than the model's context of "
            f"{model.cfg.n_ctx}; shorten it"
        )
    return tokens


def _html_path(html: str | None) -> Path | None:
    """The --html file, checked before any work: an .html name in an existing folder."""
    if html is None:
        return None
    path = Path(html)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--html {html!r} must name an .html file, e.g. --html demo.html")
    if not path.parent.is_dir():
        raise UsageError(f"--html {html!r}: the folder {str(path.parent)!r} does not exist")
    return path


def _induction_scores(
    model: HookedTransformer, seq_len: int = 24, batch: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean attention from each token of a repeated random sequence to the token after its
    previous occurrence, per [layer, head]: high for induction heads. Also returns the first
    sequence's tokens [2 * seq_len] and attention patterns [layer, head, q, k] (for the page)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.cfg.d_vocab
    low, high = (1000, vocab - 1000) if vocab > 4000 else (0, vocab)  # skip special/rare ids
    rand = torch.randint(low, high, (batch, seq_len), generator=gen)
    tokens = torch.cat([rand, rand], dim=1).to(model.W_E.device)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    patterns = []
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]  # [batch, head, q, k]
        stripe = pattern.diagonal(
            offset=1 - seq_len, dim1=-2, dim2=-1
        )  # q attends to q - seq_len + 1
        scores[layer] = stripe[..., 1:].mean(dim=(0, -1)).cpu()
        patterns.append(pattern[0].float().cpu())
    return scores, tokens[0].cpu(), torch.stack(patterns)


def _write_page(
    path: Path,
    model: HookedTransformer,
    tokens: torch.Tensor,
    logits: torch.Tensor,
    cache: ActivationCache,
    answer: int,
    induction: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    top_k: int,
) -> None:
    """The demo as one viz page: the prompt's tokens coloured by surprisal, the next-token
    prediction, the logit lens, and the induction heads (scores and attention patterns)."""
    str_tokens = model.to_str_tokens(tokens[0])
    log_probs = logits[0].float().log_softmax(-1)
    surprisal = torch.full((tokens.shape[1],), float("nan"))
    surprisal[1:] = -log_probs[:-1].gather(-1, tokens[0, 1:, None].to(log_probs.device))[:, 0].cpu()
    top = log_probs[-1].exp().topk(top_k)
    scores, rand_tokens, patterns = induction
    best = divmod(int(scores.flatten().argmax()), model.cfg.n_heads)
    figures = [
        viz.colored_tokens(
            str_tokens, surprisal, title="Prompt tokens coloured by surprisal (-log p, nats)"
        ),
        viz.bars(
            top.values.cpu(), [repr(model.to_string(int(i))) for i in top.indices],
            title=f"Top-{top_k} next tokens (probability)",
        ),
        viz.logit_lens_from_cache(cache, tokens, answer, kind="prob"),
        viz.heatmap(
            scores, title="Induction score per head (repeated random tokens)", xlabel="head",
            ylabel="layer", value_name="induction score",
        ),
        viz.attention_heads(
            patterns, model.to_str_tokens(rand_tokens), selected=best,
            title=f"Attention on repeated random tokens (L{best[0]}H{best[1]}: top induction head)",
        ),
    ]  # fmt: skip
    title = f"lmscope demo: {model.cfg.model_name}, {model.to_string(tokens[0])!r}"
    viz.page(*figures, title=title).save(path)


@torch.no_grad()
def demo(
    model_name: str = "smollm2-135m",
    prompt: str = "The capital of France is",
    top_k: int = 5,
    html: str | None = None,
) -> None:
    """Load a model and print next-token predictions, a logit lens and the top induction heads;
    with `html`, also write them as one viz page to that file.

    Raises UsageError for an empty prompt or a bad `html` path (before loading) and for a model or
    prompt that does not load or run.
    """
    if not prompt:
        raise UsageError(
            "--prompt is empty; pass some text, e.g. --prompt 'The capital of France is'"
        )
    html_path = _html_path(html)
    t0 = time.perf_counter()
    model = _load(model_name)
    load_s = time.perf_counter() - t0
    cfg = model.cfg
    print(
        f"Loaded {cfg.model_name} ({cfg.original_architecture}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads / {cfg.n_key_value_heads} kv heads) in {load_s:.1f} s"
    )

    t0 = time.perf_counter()
    tokens = _prompt_tokens(model, prompt)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid" in n)
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
    induction = _induction_scores(model)
    scores = induction[0]
    best = scores.flatten().topk(5)
    print(
        "\nTop induction heads (attention to the token after the previous occurrence, repeated random tokens):"
    )
    for score, flat in zip(best.values.tolist(), best.indices.tolist(), strict=True):
        layer, head = divmod(flat, cfg.n_heads)
        print(f"  L{layer}H{head}  {score:.3f}")
    induction_s = time.perf_counter() - t0
    times = f"load {load_s:.1f} s, prompt + logit lens {run_s:.2f} s, induction scan {induction_s:.2f} s"
    if html_path is not None:
        t0 = time.perf_counter()
        _write_page(html_path, model, tokens, logits, cache, answer, induction, top_k)
        times += f", page {time.perf_counter() - t0:.2f} s"
        print(f"\nWrote {html_path} (open it in a browser; it loads nothing from the network)")
    print(f"\nTimes: {times}")


def harvest_command(args: argparse.Namespace) -> None:
    """`lmscope harvest`: lmscope.harvest with the command line's arguments; bad input (a model,
    dataset, hook, reducer or out folder it cannot use) is a UsageError."""
    from lmscope import harvest
    from lmscope.harvest.reducers import parse

    try:
        reducers = [parse(r) for r in args.reducer] or None
    except ValueError as err:
        raise UsageError(f"--reducer: {err}") from err
    model = _load(args.model)
    start = time.perf_counter()
    try:
        h = harvest.harvest(
            model, args.dataset, hooks=args.hooks, out=args.out, batch_size=args.batch_size,
            seq_len=args.seq_len, dtype=args.dtype, shard_tokens=args.shard_tokens, reducers=reducers,
            column=args.column, engine=args.engine, workers=args.workers,
        )  # fmt: skip
    except (ValueError, ImportError) as err:
        raise UsageError(str(err)) from err
    took = time.perf_counter() - start
    tokens = h.manifest["tokens"]["n_tokens"]
    hooks = ", ".join(h.hooks)
    print(f"{args.out}: {len(h.shards)} shards, {tokens:,} tokens, hooks {hooks} ({took:.1f} s)")


def serve_command(args: argparse.Namespace) -> None:
    """`lmscope serve`: the explorer over --model on --host:--port until Ctrl-C; a non-loopback
    host without --allow-remote, a missing `serve` extra or a busy port is a UsageError."""
    from lmscope import serve
    from lmscope.serve import Limits, is_loopback

    if not is_loopback(args.host) and not args.allow_remote:
        raise UsageError(
            f"--host {args.host} is not a loopback address: anyone who can reach it can run the "
            "model; add --allow-remote to bind it anyway"
        )
    try:
        serve._require()
    except ImportError as err:
        raise UsageError(str(err)) from err
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port number (0-65535)")
    if args.max_tokens < 1:
        raise UsageError(f"--max-tokens {args.max_tokens} must be at least 1")
    model = _load(args.model)
    limits = Limits(max_prompt_tokens=args.max_tokens)
    try:
        server = serve.serve(
            model, host=args.host, port=args.port, allow_remote=args.allow_remote, limits=limits
        )
    except OSError as err:
        raise UsageError(str(err)) from err
    print(
        f"lmscope explorer of {model.cfg.model_name} at {server.url} (Ctrl-C stops it)", flush=True
    )
    server.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m lmscope` and the `lmscope` script."""
    parser = argparse.ArgumentParser(prog="lmscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="predictions, logit lens and induction heads on a model")
    p_demo.add_argument(
        "--model", default="smollm2-135m", help="alias, hub id, directory or .gguf file"
    )
    p_demo.add_argument("--prompt", default="The capital of France is")
    p_demo.add_argument(
        "--html", metavar="FILE", help="also write the results as one self-contained HTML page"
    )
    p_harvest = sub.add_parser(
        "harvest", help="store activations (or statistics) over a dataset: docs/harvest.md"
    )
    p_harvest.add_argument("--model", required=True, help="alias, hub id, directory or .gguf file")
    p_harvest.add_argument(
        "--dataset", required=True, help=".txt/.jsonl/.parquet file, folder, or datasets folder"
    )
    p_harvest.add_argument("--hooks", nargs="+", required=True, help="hook point names")
    p_harvest.add_argument("--out", required=True, help="output folder (resumed when rerun)")
    p_harvest.add_argument("--batch-size", type=int, default=8)
    p_harvest.add_argument("--seq-len", type=int, default=128)
    p_harvest.add_argument("--dtype", help="storage dtype (default: the model's)")
    p_harvest.add_argument("--shard-tokens", type=int, default=65536)
    p_harvest.add_argument("--column", default="text", help="text field of .jsonl/.parquet")
    p_harvest.add_argument(
        "--reducer",
        action="append",
        default=[],
        help="mean_var, covariance, top_k[:k=16,context=8] or histogram[:low=-10,high=10,bins=64]"
        " (repeat for several; then raw activations are not stored)",
    )
    p_harvest.add_argument("--engine", choices=["local", "ray"], default="local")
    p_harvest.add_argument("--workers", type=int, default=2, help="Ray workers")
    p_serve = sub.add_parser("serve", help="a local web explorer over a model: docs/serve.md")
    p_serve.add_argument(
        "--model", default="smollm2-135m", help="alias, hub id, directory or .gguf file"
    )
    p_serve.add_argument("--port", type=int, default=8765, help="0 takes a free port")
    p_serve.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    p_serve.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (prints a warning)"
    )
    p_serve.add_argument("--max-tokens", type=int, default=128, help="longest prompt accepted")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            demo(args.model, args.prompt, html=args.html)
        elif args.command == "harvest":
            harvest_command(args)
        elif args.command == "serve":
            serve_command(args)
    except UsageError as err:
        message = " ".join(str(err).split())  # one line, whatever the loader's message held
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
