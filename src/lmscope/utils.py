"""Small helpers with TransformerLens names: activation names, losses, tensor conversion."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lmscope.components.precision import upcast

_NAME_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_LAYER_TYPE_ALIASES = {
    "a": "attn",
    "m": "mlp",
    "b": "",
    "block": "",
    "blocks": "",
    "attention": "attn",
}
_ATTN_NAMES = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_NAMES = {"pre", "post", "mid", "pre_linear"}
_SHORTHAND = re.compile(r"^([a-z_]+?)(\d+)([a-z_]\w*)?$")


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from TransformerLens shorthand.

    Example:
        >>> get_act_name("pattern", 3)
        'blocks.3.attn.hook_pattern'
        >>> get_act_name("k6"), get_act_name("scale4ln1"), get_act_name("resid_post", 0)
        ('blocks.6.attn.hook_k', 'blocks.4.ln1.hook_scale', 'blocks.0.hook_resid_post')
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name  # already a full name
    match = _SHORTHAND.match(name)
    if match is not None and layer is None:
        name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3)
    name = _NAME_ALIASES.get(name, name)
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIASES:
        layer_type = _LAYER_TYPE_ALIASES[layer_type]
    if name in ("scale", "normalized") and layer is None:
        return f"ln_final.hook_{name}"
    full = ""
    if layer is not None:
        if layer < 0:
            raise ValueError(
                f"layer {layer} is negative; index the cache (cache[name, -1]) for that"
            )
        full += f"blocks.{layer}."
    if layer_type:
        full += f"{layer_type}."
    return full + f"hook_{name}"


def lm_cross_entropy_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    per_token: bool = False,
) -> Float[Tensor, ""] | Float[Tensor, "batch pos_minus_1"]:
    """Next-token cross-entropy. With a mask, a prediction counts only when both the position it
    is made from and the token it predicts are real (not padding). Half-precision logits are
    taken to float32 first (as transformers does), so the loss is float32 for them.

    Example:
        >>> lm_cross_entropy_loss(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]]))
        tensor(1.3863)
    """
    if logits.shape[1] < 2:
        raise ValueError(
            f"a next-token loss needs at least 2 positions per sequence, got {logits.shape[1]}: "
            "there is no prediction to score. Pass a longer input or prepend BOS (prepend_bos=True)"
        )
    log_probs = upcast(logits[:, :-1]).log_softmax(dim=-1)
    nll = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    if attention_mask is None:
        return nll if per_token else nll.mean()
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(nll.dtype)
    if per_token:
        return nll * valid
    return (nll * valid).sum() / valid.sum().clamp(min=1)


def to_numpy(x: Tensor | np.ndarray | list | float | int) -> np.ndarray:
    """A tensor (any device, with or without grad), list or number as a numpy array."""
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def get_device() -> torch.device:
    """The best device here: CUDA, then MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# -- slicing ---------------------------------------------------------------------------------------
SliceInput = int | tuple | slice | list | Tensor | np.ndarray | None


class Slice:
    """An index along one dimension, with TransformerLens's `Slice` semantics.

    - `int`: selects one entry and drops the dimension (`Slice(-1)`: the last position);
    - `tuple`: `slice(*tuple)` (`Slice((2, 5))` is `2:5`);
    - `slice`: as is;
    - list, array or tensor of ints: those entries, in that order (the dimension stays);
    - `None`: everything (identity).

    Example:
        >>> Slice(-1).apply(torch.zeros(2, 7, 4), dim=1).shape
        torch.Size([2, 4])
        >>> Slice((1, 3)).indices(10)
        array([1, 2])
    """

    def __init__(self, input_slice: SliceInput | Slice = None) -> None:
        if isinstance(input_slice, Slice):
            self.slice, self.mode = input_slice.slice, input_slice.mode
            return
        if isinstance(input_slice, Tensor) and input_slice.ndim == 0:
            input_slice = int(input_slice)
        if isinstance(input_slice, bool):
            raise TypeError("Slice does not take a bool; pass an int, slice, tuple or index list")
        if isinstance(input_slice, tuple):
            self.slice: int | slice | np.ndarray = slice(*input_slice)
            self.mode = "slice"
        elif isinstance(input_slice, (int, np.integer)):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (list, Tensor, np.ndarray)):
            arr = to_numpy(input_slice)
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                if arr.size == 0:
                    arr = arr.astype(np.int64).reshape(0)
                else:
                    raise ValueError(
                        f"an index list for Slice must be 1-D integers, got {arr.dtype} {arr.shape}"
                    )
            self.slice, self.mode = arr.astype(np.int64), "array"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        else:
            raise TypeError(f"cannot make a Slice from {type(input_slice).__name__}")

    @classmethod
    def unwrap(cls, slice_input: SliceInput | Slice) -> Slice:
        """`slice_input` itself if it is a Slice, else `Slice(slice_input)`.

        Example:
            >>> Slice.unwrap(-1).mode
            'int'
        """
        return slice_input if isinstance(slice_input, Slice) else cls(slice_input)

    def apply(self, tensor: Tensor, dim: int = 0) -> Tensor:
        """Index `tensor` along `dim` (an int Slice removes that dimension).

        Example:
            >>> Slice([0, 2]).apply(torch.arange(4))
            tensor([0, 2])
        """
        index: list = [slice(None)] * tensor.ndim
        if self.mode == "array":
            index[dim] = torch.as_tensor(self.slice, device=tensor.device)
        else:
            index[dim] = self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The indices this Slice picks out of `range(max_ctx)` (an int needs no `max_ctx`).

        Example:
            >>> Slice(slice(1, None, 2)).indices(6)
            array([1, 3, 5])
        """
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if self.mode == "array":
            return np.asarray(self.slice)
        if max_ctx is None:
            raise ValueError("max_ctx is needed to list the indices of a slice")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    def __repr__(self) -> str:
        return f"Slice({self.slice!r}, mode={self.mode!r})"


# -- small tensor helpers --------------------------------------------------------------------------
def get_corner(tensor: Any, n: int = 3) -> Tensor:
    """The top-left `n x n x ...` corner of a tensor (or of a FactoredMatrix, without forming it).

    Example:
        >>> get_corner(torch.arange(16).reshape(4, 4), 2)
        tensor([[0, 1],
                [4, 5]])
    """
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def lm_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    per_token: bool = False,
) -> Float[Tensor, ""] | Bool[Tensor, "batch pos_minus_1"]:
    """Fraction of positions whose top prediction is the next token (or the per-token hits).

    Example:
        >>> acc = lm_accuracy(model(tokens), tokens)
    """
    correct = logits[:, :-1].argmax(dim=-1) == tokens[:, 1:]
    if per_token:
        return correct
    return correct.sum() / correct.numel()


def composition_scores(left: Any, right: Any, broadcast_dims: bool = True) -> Tensor:
    """How much `left`'s output feeds `right`'s input: `|L R|_F / (|L|_F |R|_F)`.

    Both are FactoredMatrix (or dense [..., d, d] tensors). With `broadcast_dims`, the leading dims
    of left come first and those of right after them: left [L..] x right [R..] -> [L.., R..]. The
    products are computed on the factors in chunks, so no [.., d_model, d_model] matrix is formed.

    Example:
        >>> composition_scores(model.OV[0, 3], model.QK[1, 5])      # Q-composition L0H3 -> L1H5
    """
    from lmscope.factored_matrix import FactoredMatrix, product_norms

    if isinstance(left, Tensor):
        left = FactoredMatrix(left, torch.eye(left.shape[-1], dtype=left.dtype, device=left.device))
    if isinstance(right, Tensor):
        eye = torch.eye(right.shape[-2], dtype=right.dtype, device=right.device)
        right = FactoredMatrix(eye, right)
    if left.rdim != right.ldim:
        raise ValueError(
            f"left's output dim {left.rdim} does not match right's input dim {right.ldim}"
        )
    # Drop the orthogonal outer factors: |U S Vh^T X| = |S Vh^T X|, so only mdim-sized blocks remain.
    new_left = left.collapse_l()  # [*L, m_l, d]
    new_right = right.collapse_r()  # [*R, d, m_r]
    l_norms = new_left.norm(dim=(-2, -1))
    r_norms = new_right.norm(dim=(-2, -1))
    if broadcast_dims:
        comp = product_norms(new_left, new_right)  # [*L, *R]
        return comp / l_norms.reshape((*l_norms.shape, *(1,) * r_norms.ndim)) / r_norms
    lead = torch.broadcast_shapes(left.shape[:-2], right.shape[:-2])
    return _paired_product_norms(new_left, new_right, lead) / l_norms / r_norms


def _paired_product_norms(
    left: Tensor, right: Tensor, lead: torch.Size, max_elements: int = 1 << 24
) -> Tensor:
    """Frobenius norms of `left[i] @ right[i]` [*lead] for left [*, m_l, d] and right [*, d, m_r]
    broadcast to `lead`, gathering one chunk of pairs at a time (never a broadcast copy of all)."""
    if not lead:
        return (left @ right).norm(dim=(-2, -1))
    left = left.broadcast_to(*lead, *left.shape[-2:])  # views: stride 0 where broadcast
    right = right.broadcast_to(*lead, *right.shape[-2:])
    (m_l, d), m_r = left.shape[-2:], right.shape[-1]
    n = math.prod(lead)
    chunk = max(1, max_elements // (m_l * d + d * m_r + m_l * m_r + 1))
    out = left.new_empty(n)
    for start in range(0, n, chunk):
        idx = torch.unravel_index(
            torch.arange(start, min(n, start + chunk), device=left.device), lead
        )
        out[start : start + chunk] = (left[idx] @ right[idx]).norm(dim=(-2, -1))
    return out.reshape(lead)


# -- prompts and datasets --------------------------------------------------------------------------
def test_prompt(
    prompt: str,
    answer: str | list[str],
    model: Any,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
) -> list[dict[str, Any]]:
    """Check a model's prediction of `answer` after `prompt`: rank, logit and probability of each
    answer token, and the top-k tokens at each step (printed when `print_details`).

    Returns one dict per answer token: `{"token", "rank", "logit", "prob", "top_k"}` (TransformerLens
    returns None; the values are handy in tests and notebooks).

    Example:
        >>> test_prompt("The capital of France is", "Paris", model)
        Tokenized prompt: ['<|endoftext|>', 'The', ' capital', ' of', ' France', ' is']
        ...
    """
    if not isinstance(prompt, str):
        raise TypeError(
            f"test_prompt takes one prompt string (as TransformerLens's), got "
            f"{type(prompt).__name__}; call it once per prompt"
        )
    answers = [answer] if isinstance(answer, str) else list(answer)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise TypeError(f"answer must be a string or a non-empty list of strings, got {answer!r}")
    results: list[dict[str, Any]] = []
    for ans in answers:
        if prepend_space_to_answer and not ans.startswith(" "):
            ans = " " + ans
        prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
        answer_tokens = model.to_tokens(ans, prepend_bos=False)
        tokens = torch.cat([prompt_tokens, answer_tokens], dim=1)
        n_prompt, n_answer = prompt_tokens.shape[1], answer_tokens.shape[1]
        with torch.no_grad():
            logits = model(tokens)[0]
        probs = logits.softmax(-1)
        if print_details:
            print("Tokenized prompt:", model.to_str_tokens(prompt_tokens[0]))
            print("Tokenized answer:", model.to_str_tokens(answer_tokens[0]))
        ranks = []
        for i in range(n_answer):
            pos = n_prompt - 1 + i
            tok = int(tokens[0, pos + 1])
            rank = int((logits[pos] > logits[pos, tok]).sum())
            top = probs[pos].topk(top_k)
            entry = {
                "token": model.to_string(tok),
                "rank": rank,
                "logit": float(logits[pos, tok]),
                "prob": float(probs[pos, tok]),
                "top_k": [
                    (model.to_string(int(t)), float(logits[pos, t]), float(p))
                    for p, t in zip(top.values, top.indices, strict=True)
                ],
            }
            results.append(entry)
            ranks.append((entry["token"], rank))
            if print_details:
                print(
                    f"Performance on answer token:\nRank: {rank:<8} Logit: {entry['logit']:5.2f} "
                    f"Prob: {entry['prob']:6.2%} Token: |{entry['token']}|"
                )
                for k, (s, lg, p) in enumerate(entry["top_k"]):
                    print(f"Top {k}th token. Logit: {lg:5.2f} Prob: {p:6.2%} Token: |{s}|")
        if print_details:
            print("Ranks of the answer tokens:", ranks)
    return results


test_prompt.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _concat_and_chunk(
    texts: list[str], tokenizer: Any, max_length: int, add_bos_token: bool
) -> Int[Tensor, "batch seq"]:
    seq_len = max_length - 1 if add_bos_token else max_length
    sep = tokenizer.eos_token or ""
    full_text = sep.join(texts)
    if not full_text:
        return torch.zeros(0, max_length, dtype=torch.long)
    # Tokenise in pieces (fast tokenizers are much quicker on many short strings than one long one).
    n_chunks = 20
    step = (len(full_text) - 1) // n_chunks + 1
    chunks = [full_text[i * step : (i + 1) * step] for i in range(n_chunks)]
    ids = tokenizer(chunks, add_special_tokens=False)["input_ids"]
    flat = np.concatenate([np.asarray(seq, dtype=np.int64) for seq in ids])
    n_rows = len(flat) // seq_len
    tokens = torch.from_numpy(flat[: n_rows * seq_len].reshape(n_rows, seq_len).copy())
    if add_bos_token:
        bos = torch.full((n_rows, 1), tokenizer.bos_token_id, dtype=torch.long)
        tokens = torch.cat([bos, tokens], dim=1)
    return tokens


def tokenize_and_concatenate(
    dataset: Any,
    tokenizer: Any,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    num_proc: int = 10,
) -> Any:
    """Join texts with EOS, tokenise, and cut into rows of `max_length` tokens (BOS first).

    `dataset` is a Hugging Face `datasets.Dataset` (returns one with a torch-formatted "tokens"
    column, as TransformerLens), a dict with `column_name`, or a list of strings (returns a
    [n_rows, max_length] tensor). The last partial row is dropped.

    Example:
        >>> tokens = tokenize_and_concatenate(["some text", "more text"], model.tokenizer, max_length=64)
    """
    if hasattr(dataset, "map") and hasattr(dataset, "column_names"):  # HF datasets
        for key in list(dataset.column_names or []):
            if key != column_name:
                dataset = dataset.remove_columns(key)

        def tokenize_function(examples: dict[str, list[str]]) -> dict[str, np.ndarray]:
            tokens = _concat_and_chunk(examples[column_name], tokenizer, max_length, add_bos_token)
            return {"tokens": tokens.numpy()}

        kwargs = {} if streaming else {"num_proc": num_proc}
        mapped = dataset.map(
            tokenize_function, batched=True, remove_columns=[column_name], **kwargs
        )
        return mapped.with_format(type="torch")
    if isinstance(dataset, dict):
        dataset = dataset[column_name]
    texts = [row[column_name] if isinstance(row, dict) else row for row in dataset]
    return _concat_and_chunk(list(texts), tokenizer, max_length, add_bos_token)
