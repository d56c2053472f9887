"""Small helpers with TransformerLens names: activation names, losses, tensor conversion."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lmscope import compat as _compat
from lmscope.components.activations import ACTIVATIONS
from lmscope.components.precision import upcast
from lmscope.factored_matrix import composition_scores, get_corner
from lmscope.initialization import (
    NonlinearityType,
    calc_fan_in_and_fan_out,
    init_kaiming_normal_,
    init_kaiming_uniform_,
    init_xavier_normal_,
    init_xavier_uniform_,
)
from lmscope.sampling import sample_logits

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
    valid = _predicted_positions(attention_mask, tokens).to(nll.dtype)
    if per_token:
        return nll * valid
    n_valid = valid.sum()
    if n_valid.device.type != "meta" and not n_valid:  # meta tensors (shape checks) hold no data
        raise ValueError(
            "the attention mask leaves no position with a real next token to predict, so the loss "
            "is undefined; check the mask (1 = real token) or pass longer inputs"
        )
    return (nll * valid).sum() / n_valid


def _predicted_positions(
    attention_mask: Int[Tensor, "batch pos"], tokens: Int[Tensor, "batch pos"]
) -> Bool[Tensor, "batch pos_minus_1"]:
    """Where both a position and its next token are real (not padding)."""
    if attention_mask.shape != tokens.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but tokens have "
            f"{tuple(tokens.shape)}; pass the mask of these tokens (model.to_tokens gives both)"
        )
    mask = attention_mask.bool()
    return mask[:, 1:] & mask[:, :-1]


def to_numpy(x: Tensor | np.ndarray | list | tuple | float | int | bool | str) -> np.ndarray:
    """A tensor (any device or dtype, with or without grad), array, list, tuple or scalar as a
    numpy array; bfloat16 becomes float32 (numpy has no bfloat16). Other types: ValueError.

    Example:
        >>> to_numpy(torch.ones(2, dtype=torch.bfloat16))
        array([1., 1.], dtype=float32)
    """
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if isinstance(x, (list, tuple, int, float, bool, str)):
        return np.array(x)
    raise ValueError(
        f"to_numpy got an invalid type {type(x).__name__}: pass a tensor, array, list, tuple or "
        "scalar"
    )


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
def lm_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    per_token: bool = False,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, ""] | Bool[Tensor, "batch pos_minus_1"]:
    """Fraction of positions whose top prediction is the next token (or the per-token hits).
    With `attention_mask`, only positions whose own and next token are real count (per token:
    padded positions are False).

    Example:
        >>> lm_accuracy(torch.eye(3)[None], torch.tensor([[0, 1, 1]]))
        tensor(0.5000)
    """
    correct = logits[:, :-1].argmax(dim=-1) == tokens[:, 1:]
    if attention_mask is None:
        return correct if per_token else correct.sum() / correct.numel()
    valid = _predicted_positions(attention_mask, tokens)
    if per_token:
        return correct & valid
    if not valid.any():
        raise ValueError("the attention mask leaves no position with a real next token to score")
    return (correct & valid).sum() / valid.sum()


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


def is_square(x: Tensor) -> bool:
    """Whether `x` is a 2-D square matrix (TransformerLens name).

    Example:
        >>> is_square(torch.zeros(3, 3)), is_square(torch.zeros(2, 3, 3))
        (True, False)
    """
    return x.ndim == 2 and x.shape[0] == x.shape[1]


def is_lower_triangular(x: Tensor) -> bool:
    """Whether `x` is a square matrix with nothing above its diagonal.

    Example:
        >>> is_lower_triangular(torch.ones(3, 3).tril()), is_lower_triangular(torch.ones(3, 3))
        (True, False)
    """
    return is_square(x) and bool(x.equal(x.tril()))


def remove_batch_dim(tensor: Float[Tensor, "batch ..."]) -> Float[Tensor, "..."]:
    """`tensor` without its first dimension when that dimension is 1, else unchanged.

    Example:
        >>> remove_batch_dim(torch.zeros(1, 4, 5)).shape, remove_batch_dim(torch.zeros(2, 4)).shape
        (torch.Size([4, 5]), torch.Size([2, 4]))
    """
    return tensor.squeeze(0) if tensor.shape[0] == 1 else tensor


def transpose(tensor: Float[Tensor, "... a b"]) -> Float[Tensor, "... b a"]:
    """The last two dimensions swapped, whatever the leading ones.

    Example:
        >>> transpose(torch.zeros(2, 3, 4)).shape
        torch.Size([2, 4, 3])
    """
    return tensor.transpose(-1, -2)


def get_offset_position_ids(
    past_kv_pos_offset: int, attention_mask: Int[Tensor, "batch offset_pos"]
) -> Int[Tensor, "batch pos"]:
    """Position of each token counted over real (unmasked) tokens only, from `past_kv_pos_offset` on.

    Leading padding gets position 0, so a left-padded row starts at 0 at its first real token.

    Example:
        >>> get_offset_position_ids(0, torch.tensor([[0, 0, 1, 1, 1]]))
        tensor([[0, 0, 0, 1, 2]])
    """
    positions = attention_mask.cumsum(dim=1) - 1
    return positions.clamp(min=0)[:, past_kv_pos_offset:]


def get_cumsum_along_dim(tensor: Tensor, dim: int, reverse: bool = False) -> Tensor:
    """Cumulative sum along `dim`, from the end when `reverse`.

    Example:
        >>> get_cumsum_along_dim(torch.tensor([1, 2, 3]), 0, reverse=True)
        tensor([6, 5, 3])
    """
    if not reverse:
        return tensor.cumsum(dim=dim)
    return tensor.flip(dims=(dim,)).cumsum(dim=dim).flip(dims=(dim,))


def repeat_along_head_dimension(
    tensor: Float[Tensor, "batch pos d_model"], n_heads: int, clone_tensor: bool = True
) -> Float[Tensor, "batch pos n_heads d_model"]:
    """A per-head copy of the residual stream (as `hook_attn_in` holds it); a view unless cloned.

    Example:
        >>> repeat_along_head_dimension(torch.zeros(2, 3, 8), n_heads=4).shape
        torch.Size([2, 3, 4, 8])
    """
    repeated = tensor[:, :, None, :].expand(-1, -1, n_heads, -1)
    return repeated.clone() if clone_tensor else repeated


def filter_dict_by_prefix(dictionary: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under `prefix.` with the prefix (and its dot) stripped from their keys.

    Example:
        >>> filter_dict_by_prefix({"blocks.0.W_Q": 1, "blocks.1.W_Q": 2}, "blocks.0")
        {'W_Q': 1}
    """
    search = prefix if prefix.endswith(".") else prefix + "."
    return {k[len(search) :]: v for k, v in dictionary.items() if k.startswith(search)}


def check_structure(t1: Tensor, t2: Tensor, *, verbose: bool = False) -> None:
    """Print whether two square matrices order their neighbouring rows and columns alike
    (a debugging aid: `PASSED`, or the first kind of mismatch with its indices).

    Example:
        >>> check_structure(torch.eye(3), 2 * torch.eye(3))
        PASSED
    """
    if t1.ndim != 2 or t1.shape != t2.shape:
        raise ValueError(
            f"check_structure takes two 2-D tensors of one shape, got {tuple(t1.shape)} and "
            f"{tuple(t2.shape)}"
        )
    rows = [i for i in range(t1.shape[0] - 1) if not t1[i].ge(t1[i + 1]).equal(t2[i].ge(t2[i + 1]))]
    cols = [
        j
        for j in range(t1.shape[1] - 1)
        if not t1[:, j].ge(t1[:, j + 1]).equal(t2[:, j].ge(t2[:, j + 1]))
    ]
    if verbose:
        print(f"row mismatches: {rows}\ncolumn mismatches: {cols}")
    if rows:
        print(f"row mismatch: {rows}")
    elif cols:
        print(f"column mismatch: {cols}")
    else:
        print("PASSED")


def get_nested_attr(obj: Any, attr_str: str) -> Any:
    """`obj.a.b.c` for `attr_str="a.b.c"`.

    Example:
        >>> get_nested_attr(torch.zeros(2), "shape.numel")()
        2
    """
    for attr in attr_str.split("."):
        obj = getattr(obj, attr)
    return obj


def set_nested_attr(obj: Any, attr_str: str, value: Any) -> None:
    """Set `obj.a.b.c = value` for `attr_str="a.b.c"`.

    Example:
        >>> set_nested_attr(model, "cfg.default_prepend_bos", True)
    """
    head, _, last = attr_str.rpartition(".")
    setattr(get_nested_attr(obj, head) if head else obj, last, value)


USE_DEFAULT_VALUE = None


def override_or_use_default_value(default_flag: Any, override: Any | None = None) -> Any:
    """`override` unless it is None (`USE_DEFAULT_VALUE`), else `default_flag`.

    Example:
        >>> override_or_use_default_value(True, None), override_or_use_default_value(True, False)
        (True, False)
    """
    return default_flag if override is None else override


class LocallyOverridenDefaults:
    """Context manager overriding `model.cfg.default_prepend_bos` and/or
    `model.tokenizer.padding_side` inside the block, restoring them after (TransformerLens name).

    Example:
        >>> with LocallyOverridenDefaults(model, prepend_bos=False, padding_side="left"):
        ...     tokens = model.to_tokens(["a", "b c"])
    """

    _LOCATIONS = {
        "prepend_bos": ("cfg.default_prepend_bos", (None, True, False)),
        "padding_side": ("tokenizer.padding_side", (None, "left", "right")),
    }

    def __init__(self, model: Any, **overrides: Any) -> None:
        for name, value in overrides.items():
            if name not in self._LOCATIONS:
                raise ValueError(
                    f"{name!r} cannot be overridden; valid names are {list(self._LOCATIONS)}"
                )
            valid = self._LOCATIONS[name][1]
            if value not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}")
        self.model, self.overrides = model, overrides
        self._saved: dict[str, Any] = {}

    def _applies(self, name: str) -> bool:
        return not (name == "padding_side" and getattr(self.model, "tokenizer", None) is None)

    def __enter__(self) -> LocallyOverridenDefaults:
        for name, value in self.overrides.items():
            if self._applies(name):
                location = self._LOCATIONS[name][0]
                self._saved[location] = get_nested_attr(self.model, location)
                set_nested_attr(
                    self.model,
                    location,
                    override_or_use_default_value(self._saved[location], value),
                )
        return self

    def __exit__(self, *exc: object) -> None:
        for location, value in self._saved.items():
            set_nested_attr(self.model, location, value)
        self._saved.clear()


def is_library_available(name: str) -> bool:
    """Whether a package is importable here, without importing it.

    Example:
        >>> is_library_available("torch"), is_library_available("no_such_package_xyz")
        (True, False)
    """
    import importlib.util
    import sys

    return name in sys.modules or importlib.util.find_spec(name) is not None


def get_attention_mask(
    tokenizer: Any,
    tokens: Int[Tensor, "batch pos"],
    prepend_bos: bool,
    padding_side: str | None = None,
) -> Int[Tensor, "batch pos"]:
    """1 for real tokens, 0 for padding: only a run of pad tokens at the padded end counts as
    padding (a pad id inside the text is kept). With left padding and a BOS that shares the pad
    id, the BOS just before the text is kept too. No tokenizer: all ones.

    Example:
        >>> get_attention_mask(model.tokenizer, model.to_tokens(["a", "b c d"]), prepend_bos=True)
    """
    mask = torch.ones_like(tokens)
    if tokenizer is None:
        return mask
    padding_side = padding_side or tokenizer.padding_side
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    real = tokens.ne(tokenizer.pad_token_id)
    pad_run = get_cumsum_along_dim(real, -1, reverse=padding_side == "right") == 0
    mask[pad_run] = 0
    if padding_side == "left" and prepend_bos and tokenizer.bos_token_id == tokenizer.pad_token_id:
        mask[torch.arange(mask.shape[0]), pad_run.sum(-1) - 1] = 1
    return mask


def get_input_with_manually_prepended_bos(
    bos_token: str | None, input: str | list[str]
) -> str | list[str]:
    """The text(s) with `bos_token` put in front (unchanged when there is no BOS token).

    Example:
        >>> get_input_with_manually_prepended_bos("<s>", ["a", "b"])
        ['<s>a', '<s>b']
    """
    if bos_token is None:
        return input
    if isinstance(input, str):
        return bos_token + input
    return [bos_token + text for text in input]


def get_tokens_with_bos_removed(
    tokenizer: Any, tokens: Int[Tensor, "batch pos"], padding_side: str | None = None
) -> Int[Tensor, "batch pos_minus_1"]:
    """`tokens` with each row's BOS removed: the first column with right padding; with left
    padding, the BOS after the leading pads (each row keeps its length minus one).

    Example:
        >>> get_tokens_with_bos_removed(model.tokenizer, model.to_tokens("Hi", prepend_bos=True))
    """
    if tokenizer.bos_token_id is None:
        return tokens
    if (padding_side or tokenizer.padding_side) == "right":
        return tokens[..., 1:]
    if tokenizer.bos_token_id == tokenizer.pad_token_id:
        leading_pads = get_cumsum_along_dim(tokens.ne(tokenizer.pad_token_id), -1) == 0
        bos_at = leading_pads.sum(-1) - 1
    else:
        bos_at = (tokens == tokenizer.bos_token_id).int().argmax(-1)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[torch.arange(tokens.shape[0]), bos_at] = False
    return tokens[keep].view(*tokens.shape[:-1], tokens.shape[-1] - 1)


def print_gpu_mem(step_name: str = "") -> None:
    """Print the GPU memory torch has allocated, in GiB.

    Example:
        >>> print_gpu_mem("after load")
        after load ~ 0.0 GiB allocated on GPU.
    """
    allocated = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    print(f"{step_name} ~ {round(allocated / 2**30, 2)} GiB allocated on GPU.")


def gelu_new(
    input: Float[Tensor, "*batch_and_pos d_mlp"],
) -> Float[Tensor, "*batch_and_pos d_mlp"]:
    """GPT-2's tanh approximation of GELU (the function GPT-2 models use).

    Example:
        >>> gelu_new(torch.tensor([0.0, 1.0]))
        tensor([0.0000, 0.8412])
    """
    return ACTIVATIONS["gelu_new"](input)


def gelu_fast(
    input: Float[Tensor, "*batch_and_pos d_mlp"],
) -> Float[Tensor, "*batch_and_pos d_mlp"]:
    """The faster-written tanh GELU approximation (`gelu_fast` models).

    Example:
        >>> gelu_fast(torch.tensor([0.0, 1.0]))
        tensor([0.0000, 0.8412])
    """
    return ACTIVATIONS["gelu_fast"](input)


def solu(
    input: Float[Tensor, "*batch_and_pos d_mlp"],
) -> Float[Tensor, "*batch_and_pos d_mlp"]:
    """SoLU: `x * softmax(x)` over the last dimension (before the SoLU models' MLP LayerNorm).

    Example:
        >>> solu(torch.tensor([0.0, 0.0]))
        tensor([0., 0.])
    """
    return ACTIVATIONS["solu_ln"](input)


get_matrix_corner = get_corner


def download_file_from_hf(
    repo_name: str,
    file_name: str,
    subfolder: str = ".",
    cache_dir: str | None = None,
    force_is_torch: bool = False,
    **kwargs: Any,
) -> Any:
    """A file of a hub repo, through the huggingface_hub cache (offline: the cached copy).

    `.pth` files (or any file with `force_is_torch`) come back loaded with
    `torch.load(weights_only=True)` (tensors and plain containers only, never unpickled code),
    `.json` files parsed, anything else as its local path. Extra keyword arguments go to
    `huggingface_hub.hf_hub_download` (`revision`, `local_files_only`, ...).

    Example:
        >>> cfg = download_file_from_hf("gpt2", "config.json")
        >>> cfg["n_layer"]
        12
    """
    import json

    from huggingface_hub import hf_hub_download

    def fetch(local_only: bool) -> str:
        args = {**kwargs, "local_files_only": kwargs.get("local_files_only", False) or local_only}
        return hf_hub_download(
            repo_id=repo_name, filename=file_name, subfolder=subfolder, cache_dir=cache_dir, **args
        )

    try:
        path = fetch(local_only=False)
    except Exception as err:  # offline or unreachable: the cache may still hold the file
        try:
            path = fetch(local_only=True)
        except Exception:
            raise OSError(
                f"could not fetch {file_name!r} of {repo_name!r} from the Hugging Face hub and it is "
                f"not in the local cache ({err.__class__.__name__}: {err}). Connect to the internet "
                "once (the file is then cached), or pass cache_dir= where it is cached"
            ) from None
    if path.endswith(".pth") or force_is_torch:
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.endswith(".json"):
        with open(path) as f:
            return json.load(f)
    return path


DATASET_ALIASES = {
    "openwebtext": "stas/openwebtext-10k",
    "owt": "stas/openwebtext-10k",
    "pile": "NeelNanda/pile-10k",
    "c4": "NeelNanda/c4-10k",
    "code": "NeelNanda/code-10k",
    "python": "NeelNanda/code-10k",
    "c4_code": "NeelNanda/c4-code-20k",
    "c4-code": "NeelNanda/c4-code-20k",
    "wiki": "NeelNanda/wiki-10k",
}


def get_dataset(dataset_name: str, **kwargs: Any) -> Any:
    """One of TransformerLens's small 10k-text datasets (`DATASET_ALIASES`), train split, as a
    Hugging Face `datasets.Dataset` (needs the `datasets` package; offline: its cache).

    Example:
        >>> get_dataset("pile")[0]["text"][:20]
    """
    if dataset_name not in DATASET_ALIASES:
        raise ValueError(
            f"dataset {dataset_name!r} is not one of {sorted(DATASET_ALIASES)}; for another dataset "
            "call datasets.load_dataset(name, split='train') yourself"
        )
    if not is_library_available("datasets"):
        raise ImportError("get_dataset needs the `datasets` package: pip install datasets")
    from datasets import load_dataset

    try:
        return load_dataset(DATASET_ALIASES[dataset_name], split="train", **kwargs)
    except (ConnectionError, OSError) as err:
        raise OSError(
            f"could not load {DATASET_ALIASES[dataset_name]!r} ({err.__class__.__name__}: {err}): it is "
            "neither reachable on the Hugging Face hub nor in the datasets cache. Connect once to cache it"
        ) from None


def keep_single_column(dataset: Any, col_name: str) -> Any:
    """A Hugging Face dataset with every column but `col_name` removed.

    Example:
        >>> keep_single_column(get_dataset("pile"), "text").column_names
        ['text']
    """
    if col_name not in dataset.features:
        raise KeyError(
            f"the dataset has no column {col_name!r}; its columns are {list(dataset.features)}"
        )
    return dataset.remove_columns([key for key in dataset.features if key != col_name])


__all__ = [
    "DATASET_ALIASES",
    "LocallyOverridenDefaults",
    "NonlinearityType",
    "Slice",
    "SliceInput",
    "USE_DEFAULT_VALUE",
    "calc_fan_in_and_fan_out",
    "check_structure",
    "composition_scores",
    "download_file_from_hf",
    "filter_dict_by_prefix",
    "gelu_fast",
    "gelu_new",
    "get_act_name",
    "get_attention_mask",
    "get_corner",
    "get_cumsum_along_dim",
    "get_dataset",
    "get_device",
    "get_input_with_manually_prepended_bos",
    "get_matrix_corner",
    "get_nested_attr",
    "get_offset_position_ids",
    "get_tokens_with_bos_removed",
    "init_kaiming_normal_",
    "init_kaiming_uniform_",
    "init_xavier_normal_",
    "init_xavier_uniform_",
    "is_library_available",
    "is_lower_triangular",
    "is_square",
    "keep_single_column",
    "lm_accuracy",
    "lm_cross_entropy_loss",
    "override_or_use_default_value",
    "print_gpu_mem",
    "remove_batch_dim",
    "repeat_along_head_dimension",
    "sample_logits",
    "set_nested_attr",
    "solu",
    "test_prompt",
    "to_numpy",
    "tokenize_and_concatenate",
    "transpose",
]
__getattr__ = _compat.module_getattr(__name__, "utils")
