"""`lmscope serve` end to end: the server on a free loopback port in this process, the page in the
session's headless Chromium, every panel's DOM checked against the Python API on the same
prompt; a load test; bad requests answered 4xx with a message."""

from __future__ import annotations

import json
import re
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import lmscope
from lmscope import HookedTransformer
from lmscope.cli import main
from lmscope.serve import BusyError, Explorer, Limits, RequestError

pytestmark = pytest.mark.slow

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    return HookedTransformer.from_pretrained("smollm2-135m")


@pytest.fixture(scope="module")
def server(model: HookedTransformer) -> Iterator[lmscope.serve.Server]:
    with lmscope.serve(model) as server:
        yield server


def post(
    url: str, body: Any, raw: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def tip_value(tip: str) -> float:
    return float(tip.rsplit(" ", 1)[1])


@torch.no_grad()
def test_every_panel_in_the_browser(
    browser: Any, server: Any, model: HookedTransformer, tmp_path: Path
) -> None:
    tokens = model.to_tokens(PROMPT)
    logits, cache = model.run_with_cache(tokens)
    n = tokens.shape[1]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
    page.goto(server.url)
    page.fill("#prompt", PROMPT)
    page.click("#run")
    page.wait_for_selector(f"body[data-ran='{PROMPT}']", state="attached", timeout=120_000)

    def tab(name: str) -> None:
        page.click(f"nav button[data-panel='{name}']")
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)

    # tokens: every position's top-k, the last one's top token is the model's prediction
    tab("tokens")
    rows = page.locator("#tokens-out tr.tokrow")
    assert rows.count() == n
    top = logits[0, -1].softmax(-1)
    best = page.locator("#tokens-out tr.tokrow").nth(n - 1).locator(".top-tok").first
    assert best.get_attribute("data-token") == model.to_string(int(top.argmax()))
    assert float(best.get_attribute("data-prob")) == pytest.approx(float(top.max()), abs=2e-6)

    # logit lens: the last layer's cell at each position is the model's own probability
    tab("lens")
    target = int(top.argmax())
    probs = logits[0].softmax(-1)[:, target]
    cells = page.locator("#lens-out .lmv-cells").first.locator("rect[data-tip]")
    assert cells.count() == (model.cfg.n_layers + 1) * n
    for j in (0, n // 2, n - 1):
        tip = cells.nth(model.cfg.n_layers * n + j).get_attribute("data-tip")
        assert tip.startswith(f"after final_post, position {j} ")
        assert tip_value(tip) == pytest.approx(float(probs[j]), rel=1e-3, abs=1e-6)

    # attention: select layer 3 head 2, hover the last token: its row of the pattern
    tab("attention")
    page.fill("#attn-layer", "3")
    page.fill("#attn-head", "2")
    page.click("#attn-run")
    page.wait_for_selector("#attention-out .lmv[data-layer='3'][data-head='2']", state="attached")
    toks = page.locator("#attention-out .lmv-toks .lmv-tok")
    toks.nth(n - 1).hover()
    row = [float(toks.nth(j).get_attribute("data-a")) for j in range(n)]
    expected = cache["pattern", 3][0, 2, n - 1]
    assert row == pytest.approx(expected.tolist(), abs=2e-5)
    page.screenshot(path=str(tmp_path / "attention_row.png"))

    # DLA: a head cell and the top neuron against logit_attrs on the cache
    tab("dla")
    heads = cache.stack_head_results(pos_slice=-1)
    head_dla = cache.logit_attrs(heads, target, pos_slice=-1)[:, 0].reshape(model.cfg.n_layers, -1)
    tips = page.locator("#dla-out rect[data-tip]").evaluate_all(
        "els => els.map(e => e.dataset.tip)"
    )
    cell = next(t for t in tips if t.startswith("5 \u00d7 1: DLA "))
    assert tip_value(cell) == pytest.approx(float(head_dla[5, 1]), rel=2e-3, abs=1e-4)
    neuron_tip = next(t for t in tips if re.match(r"L\d+N\d+: ", t))
    layer, neuron = map(int, re.match(r"L(\d+)N(\d+)", neuron_tip).groups())
    vec = cache["post", layer][0, -1, neuron] * model.W_out[layer, neuron]
    want = cache.logit_attrs(vec[None, None], target, pos_slice=-1)
    assert tip_value(neuron_tip) == pytest.approx(float(want), rel=2e-3, abs=1e-4)

    # patching: one resid_pre cell against the patched forward done by hand
    tab("patching")
    clean, corrupted = "A B A", "A C A"  # 4 tokens: the sweep is 60 forwards
    page.fill("#clean", clean)
    page.fill("#corrupted", corrupted)
    page.fill("#answer", " B")
    page.fill("#wrong", " C")
    page.click("#patch-run")
    page.wait_for_selector(f"#patching-out[data-key='{clean}']", state="attached", timeout=120_000)
    clean_tokens, corrupted_tokens = model.to_tokens(clean), model.to_tokens(corrupted)
    _, clean_cache = model.run_with_cache(clean_tokens)
    layer, pos = 4, clean_tokens.shape[1] - 1
    name = f"blocks.{layer}.hook_resid_pre"

    def put(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        resid[:, pos] = clean_cache[name][:, pos]
        return resid

    patched = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, put)])
    d, c = model.to_single_token(" B"), model.to_single_token(" C")
    metric = float(patched[0, -1, d] - patched[0, -1, c])
    tips = page.locator("#patching-out rect[data-tip]").evaluate_all(
        "els => els.map(e => e.dataset.tip)"
    )
    cell = next(t for t in tips if t.startswith(f"{layer} \u00d7 ") and f"({pos}):" in t)
    assert tip_value(cell) == pytest.approx(metric, rel=2e-3, abs=1e-4)
    page.screenshot(path=str(tmp_path / "patching.png"), full_page=True)

    # steering: the slider's coefficient regenerates; the text equals generate() with the hook
    tab("steering")
    page.fill("#steer-layer", "6")
    page.fill("#steer-n", "8")
    page.locator("#steer-coef").fill("8")
    page.wait_for_selector("#steer-out[data-coef='8']", state="attached", timeout=120_000)
    direction = server.explorer.steering_direction("I love this", "I hate this", 6)
    hook = ("blocks.6.hook_resid_pre", lambda r, hook: r + 8.0 * direction)
    with model.hooks(fwd_hooks=[hook]):
        want = model.generate(
            "I think the movie was", max_new_tokens=8, do_sample=False, verbose=False
        )
    assert page.inner_text("#steer-out") == want
    page.screenshot(path=str(tmp_path / "steering.png"), full_page=True)
    context.close()
    assert errors == [] and outside == []


def test_load(server: Any, model: HookedTransformer, capsys: Any) -> None:
    """4 clients x 25 requests at once: every one answered, and right."""
    prompts = [f"The {w} of France is" for w in ("capital", "king", "river", "food")]
    want = {p: model.to_string(int(model(p)[0, -1].argmax())) for p in prompts}
    times: list[float] = []
    failures: list[str] = []

    def client(prompt: str) -> None:
        for i in range(25):
            t0 = time.perf_counter()
            status, body = post(server.url + "api/tokens", {"prompt": prompt, "k": 1 + i % 5})
            times.append(time.perf_counter() - t0)
            if status != 200 or body["top"][-1][0]["token"] != want[prompt]:
                failures.append(f"{status} {body}")

    threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and len(times) == 100
    p95 = statistics.quantiles(times, n=20)[-1]
    with capsys.disabled():  # shown in the test output, captured or not
        print(f"\nserve load: 4 clients x 25 requests, p50 {statistics.median(times) * 1e3:.1f} ms, "
              f"p95 {p95 * 1e3:.1f} ms")  # fmt: skip


BAD = [
    ("tokens", {"prompt": ""}, 400, "'prompt' is empty"),
    ("tokens", {"k": 3}, 400, "missing field 'prompt'"),
    ("tokens", {"prompt": "hi", "k": 0}, 400, "'k' is 0"),
    ("tokens", {"prompt": "hi", "k": "5"}, 400, "'k' must be an integer, got \"5\""),
    ("tokens", {"prompt": "word " * 200}, 400, "more than the limit of 128"),
    ("tokens", ["prompt"], 400, "must be a JSON object"),
    ("attention", {"prompt": "hi", "layer": 30}, 400, "'layer' is 30"),
    ("attention", {"prompt": "hi", "layer": 0, "head": -1}, 400, "'head' is -1"),
    ("dla", {"prompt": "hi", "answer": " Parisian city"}, 400, "not one"),
    ("dla", {"prompt": "hi", "answer": 10**9}, 400, "outside the vocabulary"),
    (
        "patch",
        {"clean": "a b", "corrupted": "a b c", "answer": " a", "wrong": " b"},
        400,
        "same length",
    ),
    (
        "steer",
        {"prompt": "a", "positive": "b", "negative": "c", "layer": 1, "coef": float("nan")},
        400,
        "'coef'",
    ),
    ("lens", {"prompt": "hi", "kind": "eval"}, 400, "'kind'"),
    ("nothing", {}, 404, "no panel 'nothing'"),
]


@pytest.mark.parametrize(("panel", "body", "status", "message"), BAD, ids=[b[3] for b in BAD])
def test_bad_requests(server: Any, panel: str, body: Any, status: int, message: str) -> None:
    got, answer = post(server.url + "api/" + panel, body)
    assert got == status and message in answer["error"], answer
    assert "Traceback" not in answer["error"]


def test_malformed_and_oversized(server: Any) -> None:
    status, answer = post(server.url + "api/tokens", None, raw=b"{not json")
    assert status == 400 and "not JSON" in answer["error"]
    status, answer = post(server.url + "api/tokens", None, raw=b"x" * 100_000)
    assert status == 413 and "over 65536 bytes" in answer["error"]
    with pytest.raises(urllib.error.HTTPError) as err:  # GET on a panel
        urllib.request.urlopen(server.url + "api/tokens", timeout=30)
    assert err.value.code == 405
    status, answer = post(
        server.url + "api/tokens", {"prompt": "hi"}, headers={"Host": "evil.example"}
    )
    assert (
        status == 400 and "is not served" in answer["error"]
    )  # DNS rebinding: loopback names only


def test_internal_error_is_json_without_traceback(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(body: Any) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(server.explorer, "tokens", boom)
    status, answer = post(server.url + "api/tokens", {"prompt": "hi"})
    assert status == 500 and answer == {
        "error": "internal error (RuntimeError); see the server's log"
    }


def test_busy_and_serialised(model: HookedTransformer) -> None:
    """With the model held and the queue full, a request is refused at once with 503 'busy'."""
    with lmscope.serve(model, limits=Limits(max_pending=1)) as server:
        with server.explorer._slot():  # another request holds the model
            status, answer = post(server.url + "api/tokens", {"prompt": "hi"})
        assert status == 503 and answer["error"].startswith("busy")
        assert post(server.url + "api/tokens", {"prompt": "hi"})[0] == 200
    explorer = Explorer(model, Limits(max_pending=1))
    with explorer._slot(), pytest.raises(BusyError, match="busy"):
        explorer.tokens({"prompt": "hi"})
    with pytest.raises(RequestError, match="must be a JSON object"):
        explorer.tokens("hi")  # type: ignore[arg-type]


def test_binding(model: HookedTransformer, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    with pytest.raises(ValueError, match="allow_remote=True"):
        lmscope.serve(model, host="0.0.0.0")
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--host", "0.0.0.0"])
    assert stop.value.code == 2 and "--allow-remote" in capsys.readouterr().err
    server = lmscope.serve(model, host="0.0.0.0", allow_remote=True)
    server.stop()
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ImportError, match=r"pip install 'lmscope\[serve\]'"):
        lmscope.serve(model)


def test_cli_serves_until_stopped(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """`python -m lmscope serve --port 0` loads the model, prints the URL it serves, and serves
    the page and the API there (its wait() is replaced by one request and a stop)."""
    from lmscope.serve import Server

    seen: dict[str, Any] = {}

    def wait(self: Server) -> None:
        with urllib.request.urlopen(self.url + "api/info", timeout=60) as r:
            seen["info"] = json.loads(r.read())
        with urllib.request.urlopen(self.url, timeout=60) as r:
            seen["csp"] = r.headers["Content-Security-Policy"]
        self.stop()

    monkeypatch.setattr(Server, "wait", wait)
    main(["serve", "--port", "0", "--max-tokens", "64"])
    out = capsys.readouterr().out
    assert re.search(r"lmscope explorer of smollm2-135m at http://127\.0\.0\.1:\d+/", out)
    assert seen["info"]["n_layers"] == 30 and seen["info"]["limits"]["max_prompt_tokens"] == 64
    assert seen["csp"].startswith("default-src 'none'")
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--port", "70000"])
    assert stop.value.code == 2 and "--port 70000" in capsys.readouterr().err
