"""`lmscope serve` speed: how long a 32-token prompt takes to update every prompt panel (tokens
with top-k, logit lens, attention, DLA per head and neuron) through the running server's HTTP
API, as the page asks for them, and how long a panel switch or re-draw takes once the run is
cached. The baseline, measured in this process on the same prompt, is one `run_with_cache` (the
forward every panel needs); the target (issue 16) is < 2 s for all panels on 2 CPU cores.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serve_speed.py            # 3 repeats
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serve_speed.py --repeats 1

Each repeat uses a fresh 32-token prompt (a new word at its start), so nothing is cached from
the previous one; medians are printed. Steering and patching run on request only (their own
buttons) and are timed separately: a steering generation of 20 tokens and a patching sweep
(resid_pre by layer x position and every head's output) over an 8-token pair.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from typing import Any

import torch

import lmscope
from lmscope import HookedTransformer

WORDS = "apple river stone cloud maple ocean tiger lamp".split()


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def prompt_of(model: HookedTransformer, word: str, n_tokens: int = 32) -> str:
    """A prompt of exactly `n_tokens` tokens (with BOS) starting with `word`."""
    text = f"{word} " + "When Mary and John went to the store, John gave a drink to Mary. " * 4
    ids = model.to_tokens(text)[0, :n_tokens]
    prompt = model.to_string(ids[1:])  # without BOS
    assert model.to_tokens(prompt).shape[1] == n_tokens, "the prompt does not re-tokenise to 32"
    return prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = HookedTransformer.from_pretrained("smollm2-135m")
    threads = torch.get_num_threads()
    print(f"smollm2-135m, {threads} torch threads, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    server = lmscope.serve(model)
    api = server.url + "api/"
    with torch.inference_mode():  # warm-up: first-call costs are not the explorer's
        model.run_with_cache(model.to_tokens(prompt_of(model, "warm")))
    base, cold, warm = [], [], []
    parts: dict[str, list[float]] = {"tokens": [], "lens": [], "attention": [], "dla": []}
    for i in range(args.repeats):
        prompt = prompt_of(model, WORDS[i % len(WORDS)] + str(i))
        tokens = model.to_tokens(prompt)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.run_with_cache(tokens)
            base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        top = post(api + "tokens", {"prompt": prompt, "k": 5})["top"][-1][0]["token"]
        t1 = time.perf_counter()
        post(api + "lens", {"prompt": prompt, "k": 5})
        t2 = time.perf_counter()
        post(api + "attention", {"prompt": prompt, "layer": 0, "head": 0})
        t3 = time.perf_counter()
        post(api + "dla", {"prompt": prompt, "answer": top})
        t4 = time.perf_counter()
        cold.append(t4 - t0)
        for name, took in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[name].append(took)
        t0 = time.perf_counter()  # the tabs again, and another head: all from the caches
        post(api + "tokens", {"prompt": prompt, "k": 5})
        post(api + "lens", {"prompt": prompt, "k": 5})
        post(api + "attention", {"prompt": prompt, "layer": 3, "head": 2})
        post(api + "dla", {"prompt": prompt, "answer": top})
        warm.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    post(api + "steer", {"prompt": "I think the movie was", "positive": "I love this",
                         "negative": "I hate this", "layer": 6, "coef": 4.0,
                         "max_new_tokens": 20})  # fmt: skip
    steer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    post(api + "patch", {"clean": "When John and Mary went, John gave",
                         "corrupted": "When John and Mary went, Mary gave",
                         "answer": " it", "wrong": " a"})  # fmt: skip
    patch_s = time.perf_counter() - t0
    server.stop()
    b, c, w = (statistics.median(x) for x in (base, cold, warm))
    print(f"run_with_cache (baseline), 32 tokens: {b:.3f} s")
    print(f"all prompt panels, new 32-token prompt: {c:.3f} s ({c / b:.1f}x the baseline; "
          f"target < 2 s: {'met' if c < 2 else 'missed'})")  # fmt: skip
    print("  " + ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in parts.items())
          + " (tokens includes the run_with_cache)")  # fmt: skip
    print(f"panel switches (4 panels, cached run): {w * 1e3:.1f} ms ({w / b:.3f}x the baseline)")
    print(
        f"steering, 20 new tokens: {steer_s:.2f} s; patching sweep, 8-token pair: {patch_s:.2f} s"
    )


if __name__ == "__main__":
    main()
