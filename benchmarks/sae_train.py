"""Train a top-k sparse autoencoder on SmolLM2-135M's layer-15 residual stream, on CPU, from a
corpus that ships with Python itself, and measure it on held-out tokens.

Corpus (offline, real text): Python's language-reference topics (`pydoc_data.topics`, the
English text behind `help("assert")` etc., ~113k SmolLM2 tokens) followed by the standard
library's own source files (`*.py` at the top of the stdlib folder, sorted by name) until about
300k tokens in all. It is the running interpreter's: the figures in docs/sae.md are for CPython
3.11.7. `lmscope.harvest` runs the embedded SmolLM2-135M over it (rows of 256 tokens, BOS first)
and stores `blocks.15.hook_resid_post` (resumable: a rerun reuses the finished harvest). The BOS
position is left out everywhere: its residual is ~100x larger than other tokens' (an attention
sink), so it would dominate the variance a reconstruction is judged by.

Every 10th row is held out. The SAE (top-k, k=32, 4x expansion: 2304 features) is trained with
`lmscope.sae.train` on the rest; on the held-out tokens the script reports the explained variance
(1 - |x - x_hat|² / |x - mean|², summed over tokens and dimensions), L0 (active features per
token), the dead fraction, SmolLM2's loss with the SAE spliced in (and the loss recovered against
zeroing the layer), saves the SAE in SAELens's format and, when the SAELens environment
(.venv-sae, `make .venv-sae/.sae`) is there, checks that `sae_lens.SAE.load_from_disk` reads it
and computes the same features. Figures of a run are in docs/sae.md.

    python benchmarks/sae_train.py --work /tmp/sae_bench   # harvest (once; ~1 h on a shared
                                                           # 2-core machine) + ~5 CPU min of training
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sysconfig
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import lmscope
from lmscope.sae import SAETrainConfig, evaluate

HOOK = "blocks.15.hook_resid_post"
MODEL = "smollm2-135m"
SEQ_LEN = 256
STDLIB_CHARS = 740_000  # with the topics, ~300k SmolLM2 tokens


def local_corpus(stdlib_chars: int = STDLIB_CHARS) -> list[str]:
    """Python's reference topics, then stdlib sources (sorted) up to `stdlib_chars` characters."""
    import pydoc_data.topics

    texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    total = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        if total >= stdlib_chars:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
    return texts


def harvest(work: Path, verbose: bool = True) -> lmscope.harvest.Harvest:
    """The layer-15 residual stream over the corpus (resumed or reused when already there)."""
    return lmscope.harvest(
        MODEL,
        local_corpus(),
        hooks=[HOOK],
        out=work / "harvest",
        seq_len=SEQ_LEN,
        batch_size=4,
        verbose=verbose,
    )


def split_rows(h: lmscope.harvest.Harvest) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train activations, held-out activations, held-out token rows): every 10th row held out."""
    acts = h.read(HOOK)  # [rows, seq_len, d_model]
    rows = torch.arange(acts.shape[0])
    held = rows % 10 == 9
    return acts[~held], acts[held], h.tokens[: acts.shape[0]][held].long()


def saelens_check(sae_dir: Path, sample: torch.Tensor) -> dict[str, float] | None:
    """Load the saved SAE with SAELens (in .venv-sae) and compare its features with lmscope's
    on `sample`; None when the SAELens environment is missing."""
    python = Path(__file__).resolve().parents[1] / ".venv-sae" / "bin" / "python"
    if not python.exists():
        return None
    save_file({"x": sample.contiguous()}, sae_dir.parent / "sample.safetensors")
    code = (
        "import json, sys, sae_lens, lmscope; from safetensors.torch import load_file\n"
        "d = sys.argv[1]; x = load_file(d + '/../sample.safetensors')['x']\n"
        "theirs, ours = sae_lens.SAE.load_from_disk(d), lmscope.SAE.load_from_disk(d)\n"
        "print(json.dumps({'architecture': theirs.cfg.architecture(), "
        "'encode_max_diff': float((theirs.encode(x) - ours.encode(x)).abs().max()), "
        "'decode_max_diff': float((theirs(x) - ours(x)).abs().max())}))\n"
    )
    run = subprocess.run([str(python), "-c", code, str(sae_dir)], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


@torch.no_grad()
def spliced_losses(sae: lmscope.SAE, tokens: torch.Tensor) -> dict[str, float]:
    """SmolLM2's next-token loss on held-out rows: as it is, with the SAE's reconstruction in
    place of layer 15's residual stream, and with that residual zeroed (all but BOS); the share
    of the zero-ablation's damage the SAE avoids is the "loss recovered"."""
    model = lmscope.HookedSAETransformer.from_pretrained(MODEL, verbose=False)
    clean = float(model(tokens, return_type="loss"))
    spliced = float(model.run_with_saes(tokens, saes=[sae], return_type="loss"))

    def zero(x: torch.Tensor, hook: object) -> torch.Tensor:
        x[:, 1:] = 0.0
        return x

    ablated = float(model.run_with_hooks(tokens, fwd_hooks=[(HOOK, zero)], return_type="loss"))
    return {
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_zero_ablated": ablated,
        "loss_recovered": (ablated - spliced) / (ablated - clean),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmscope_sae_bench"))
    parser.add_argument("--harvest-only", action="store_true")
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    start, cpu = time.perf_counter(), time.process_time()
    h = harvest(args.work)
    print(f"harvest: {len(h)} rows of {SEQ_LEN} tokens ({time.perf_counter() - start:.0f} s)")
    if args.harvest_only:
        return
    train_acts, held_acts, held_tokens = split_rows(h)
    config = SAETrainConfig(
        d_sae=args.d_sae,
        arch="topk",
        k=args.k,
        batch_size=args.batch_size,
        lr=args.lr,
        training_tokens=args.steps * args.batch_size,
        lr_decay_steps=args.steps // 5,
        resample_every=200,
        seed=0,
    )
    start, cpu = time.perf_counter(), time.process_time()
    meta = {"hook_name": HOOK, "model_name": MODEL, "context_size": SEQ_LEN, "prepend_bos": True}
    sae = lmscope.sae.train(train_acts, config, metadata=meta, save_path=str(args.work / "sae"))
    train_wall, train_cpu = time.perf_counter() - start, time.process_time() - cpu
    result: dict[str, object] = {
        "corpus_tokens": int(h.tokens.numel()),
        "train_tokens_available": int(train_acts.shape[0] * (SEQ_LEN - 1)),
        "held_out_tokens": int(held_acts.shape[0] * (SEQ_LEN - 1)),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "k": args.k,
        "steps": args.steps,
        "tokens_trained_on": args.steps * args.batch_size,
        "train_seconds_wall": round(train_wall, 1),
        "train_seconds_cpu": round(train_cpu, 1),
        **{f"held_out_{k}": v for k, v in evaluate(sae, held_acts).items()},
        **{
            f"train_{k}": v
            for k, v in evaluate(sae, train_acts[:128]).items()
            if k in ("explained_variance", "l0")
        },
        **spliced_losses(sae, held_tokens[:8]),
        "saelens": saelens_check(args.work / "sae", held_acts[:4, 1:].reshape(-1, sae.cfg.d_in)),
    }
    (args.work / "result.json").write_text(json.dumps(result, indent=1))
    for key, value in result.items():
        print(f"{key:<32} {value:.4f}" if isinstance(value, float) else f"{key:<32} {value}")


if __name__ == "__main__":
    main()
