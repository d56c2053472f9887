"""Quick evaluations with TransformerLens's names: `sanity_check`, `induction_loss`, the IOI prompt
generator `IOIDataset` and `ioi_eval`, and `evaluate_on_dataset`.

Example:
    >>> sanity_check(model)            # loss on a fixed paragraph: < 5 is healthy, > 7 is broken
    >>> induction_loss(model)          # loss on the second half of repeated random tokens
    >>> ioi_eval(model, num_samples=100)
    {'Logit Difference': 3.1, 'Accuracy': 0.93}
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import Dataset

from lmscope.utils import lm_cross_entropy_loss

if TYPE_CHECKING:
    from lmscope.model import HookedTransformer

SANITY_TEXT = (
    "A microscope does not change what it looks at; it changes what we can see. Each time a new "
    "instrument has let people look one level deeper, a field of study has grown up around the new "
    "view, and questions that had seemed philosophical became experimental."
)


@torch.no_grad()
def sanity_check(model: HookedTransformer) -> Float[Tensor, ""]:
    """Mean next-token loss on a fixed English paragraph (cut to the context): a rough check that
    a model loaded well (a trained model scores well under 5; above 7 something is wrong).

    Example:
        >>> float(sanity_check(model)) < 5
        True
    """
    tokens = model.to_tokens(SANITY_TEXT, truncate=True)
    return model(tokens, return_type="loss")


@torch.no_grad()
def induction_loss(
    model: HookedTransformer,
    tokenizer: Any = None,
    batch_size: int = 4,
    subseq_len: int = 384,
    prepend_bos: bool | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Float[Tensor, ""]:
    """Mean loss on the second copy of a repeated random token sequence (excluding its first
    token, which nothing predicts): low when the model has induction heads.

    Tokens are drawn (seeded) from ids 100..20000 (clipped to the vocabulary); `subseq_len` is cut
    to fit the context. With `prepend_bos` (default: the model's) a BOS token comes first.

    Example:
        >>> induction_loss(model, subseq_len=64)
        tensor(0.93)
    """
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    prepend_bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    bos_id = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    n_bos = 1 if prepend_bos and bos_id is not None else 0
    subseq_len = min(subseq_len, (model.cfg.n_ctx - n_bos) // 2)
    if subseq_len < 2:
        raise ValueError("the context is too short for an induction test")
    low = min(100, model.cfg.d_vocab // 4)
    high = max(low + 1, min(20000, model.cfg.d_vocab))
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(low, high, (batch_size, subseq_len), generator=gen)
    tokens = torch.cat([first, first], dim=1)
    if n_bos:
        tokens = torch.cat([torch.full((batch_size, 1), bos_id), tokens], dim=1)
    tokens = tokens.to(device if device is not None else model.W_E.device)
    per_token = lm_cross_entropy_loss(model(tokens), tokens, per_token=True)
    # per_token[:, i] is the loss of predicting token i + 1; the second copy's 2nd token onward.
    return per_token[:, n_bos + subseq_len :].mean()


class IOIDataset(Dataset):
    """Indirect-object-identification prompts: "When Mary and John went to the store, John gave a
    drink to Mary": the model should prefer " Mary" (IO, the indirect object) to " John" (S, the
    subject) as the last word.

    As in TransformerLens, each text ends with the answer: `[A]` in a template is the IO name
    (twice, the last at the end), `[B]` the subject (twice), `[LOCATION]` / `[OBJECT]` fill from
    `nouns`. Samples come from one seeded generator (TransformerLens reseeds inside every draw, so
    all its samples are the same prompt). `symmetric=True` adds each prompt with the names swapped.
    Items are `{"prompt": ids (with the answer), "IO": ids, "S": ids}`; `samples` holds the texts
    as `{"text", "IO", "S"}`.

    Example:
        >>> data = IOIDataset(model.tokenizer, num_samples=8, seed=0)
        >>> data.samples[0]["text"], data.samples[0]["IO"]
    """

    def __init__(
        self,
        tokenizer: Any,
        templates: list[str] | None = None,
        names: list[str] | None = None,
        nouns: dict[str, list[str]] | None = None,
        num_samples: int = 1000,
        symmetric: bool = False,
        prepend_bos: bool = True,
        seed: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.prepend_bos = prepend_bos
        self.templates = templates if templates is not None else self.get_default_templates()
        self.names = names if names is not None else self.get_default_names()
        self.nouns = nouns if nouns is not None else self.get_default_nouns()
        if len(self.names) < 2:
            raise ValueError("IOIDataset needs at least two names")
        self._rng = random.Random(seed)
        self.samples: list[dict[str, str]] = []
        for _ in range(num_samples // 2 if symmetric else num_samples):
            self.samples.extend(self.get_sample(symmetric=symmetric))

    def __len__(self) -> int:
        return len(self.samples)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __getitem__(self, idx: int) -> dict[str, Int[Tensor, " n"]]:
        sample = self.samples[idx]
        prompt = self._encode(sample["text"])
        if self.prepend_bos and self.tokenizer.bos_token_id is not None:
            prompt = [self.tokenizer.bos_token_id, *prompt]
        return {
            "prompt": torch.tensor(prompt, dtype=torch.long),
            "IO": torch.tensor(self._encode(sample["IO"]), dtype=torch.long),
            "S": torch.tensor(self._encode(sample["S"]), dtype=torch.long),
        }

    def get_sample(self, symmetric: bool = False) -> list[dict[str, str]]:
        """One random prompt (two with `symmetric`): `{"text", "IO", "S"}` with " "-prefixed names.

        Example:
            >>> IOIDataset(tokenizer, num_samples=0).get_sample()[0]["IO"]
        """
        template = self._rng.choice(self.templates)
        for kind, options in self.nouns.items():
            template = template.replace(f"[{kind}]", self._rng.choice(options))
        io, s = self._rng.sample(self.names, 2)
        samples = [
            {"text": template.replace("[A]", io).replace("[B]", s), "IO": f" {io}", "S": f" {s}"}
        ]
        if symmetric:
            samples.append(
                {
                    "text": template.replace("[A]", s).replace("[B]", io),
                    "IO": f" {s}",
                    "S": f" {io}",
                }
            )
        return samples

    @staticmethod
    def get_default_names() -> list[str]:
        """Common first names (one token each, with a leading space, in GPT-2 and Llama-style
        tokenizers).

        Example:
            >>> IOIDataset.get_default_names()[:2]
            ['John', 'Mary']
        """
        return ["John", "Mary", "Tom", "James", "Paul", "Mark", "Sarah", "Anna", "Lisa", "David"]

    @staticmethod
    def get_default_templates() -> list[str]:
        """Templates in both orders: IO first ([A] and [B] ...) and subject first ([B] and [A] ...).

        Example:
            >>> IOIDataset.get_default_templates()[0]
        """
        return [
            "When [A] and [B] went to the [LOCATION], [B] gave the [OBJECT] to [A]",
            "When [B] and [A] went to the [LOCATION], [B] gave the [OBJECT] to [A]",
            "[A] and [B] went to the [LOCATION] to buy [OBJECT]. [B] handed the [OBJECT] to [A]",
            "Then, [B] and [A] went to the [LOCATION]. [B] gave the [OBJECT] to [A]",
            "After [A] and [B] arrived at the [LOCATION], [B] passed the [OBJECT] to [A]",
        ]

    @staticmethod
    def get_default_nouns() -> dict[str, list[str]]:
        """Fillers for [LOCATION] and [OBJECT].

        Example:
            >>> sorted(IOIDataset.get_default_nouns())
            ['LOCATION', 'OBJECT']
        """
        return {
            "LOCATION": ["store", "market", "park", "school", "office"],
            "OBJECT": ["milk", "book", "ball", "bread", "bag"],
        }


@torch.no_grad()
def ioi_eval(
    model: HookedTransformer,
    dataset: IOIDataset | None = None,
    batch_size: int = 8,
    num_samples: int = 1000,
    tokenizer: Any = None,
    symmetric: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Mean logit difference logit(IO) - logit(S) where the answer starts, and the share of prompts
    where IO wins (TransformerLens's `ioi_eval`). Each prompt ends with its IO tokens; names that
    share leading tokens are compared at their first differing token.

    Differences from TransformerLens: padding is masked (TransformerLens pads with id 0 unmasked,
    harmless on the right), and a prompt whose last tokens are not the separately tokenised IO
    raises an error instead of reading a wrong position.

    Example:
        >>> ioi_eval(model, num_samples=100)
        {'Logit Difference': 3.1, 'Accuracy': 0.93}
    """
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if dataset is None:
        if tokenizer is None:
            raise ValueError("ioi_eval needs a tokenizer (the model has none)")
        dataset = IOIDataset(
            tokenizer,
            num_samples=num_samples,
            symmetric=symmetric,
            prepend_bos=model.cfg.default_prepend_bos,
            seed=seed,
        )
    items = []  # (prompt ids, position whose logits predict the answer, io id, s id)
    for i in range(len(dataset)):
        item = dataset[i]
        prompt, io, s = item["prompt"], item["IO"], item["S"]
        prefix_length = len(prompt) - len(io)
        if not torch.equal(prompt[prefix_length:], io):
            raise ValueError(
                f"sample {i} does not end with its IO tokens {io.tolist()} (got "
                f"{prompt[prefix_length:].tolist()}): the name tokenises differently in context"
            )
        n = min(len(io), len(s))
        differ = (io[:n] != s[:n]).nonzero()
        if len(differ) == 0:
            raise ValueError(f"IO and S tokenise identically in sample {i}")
        start = int(differ[0])
        items.append((prompt, prefix_length + start - 1, int(io[start]), int(s[start])))
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    total_diff, correct = 0.0, 0
    device = model.W_E.device
    for b in range(0, len(items), batch_size):
        chunk = items[b : b + batch_size]
        length = max(len(p) for p, *_ in chunk)
        tokens = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for j, (p, *_) in enumerate(chunk):
            tokens[j, : len(p)] = p
            mask[j, : len(p)] = 1
        logits = model(tokens.to(device), attention_mask=mask.to(device))
        for j, (_, position, io_id, s_id) in enumerate(chunk):
            diff = float(logits[j, position, io_id] - logits[j, position, s_id])
            total_diff += diff
            correct += diff > 0
    return {"Logit Difference": total_diff / len(items), "Accuracy": correct / len(items)}


@torch.no_grad()
def evaluate_on_dataset(
    model: HookedTransformer,
    data_loader: Iterable[Any],
    truncate: int = 100,
    device: str | torch.device | None = None,
) -> float:
    """Mean loss over the first `truncate` batches of `data_loader` (batches are token tensors or
    dicts with "tokens", e.g. from `utils.tokenize_and_concatenate`).

    Example:
        >>> evaluate_on_dataset(model, torch.split(tokens, 8), truncate=10)
    """
    device = device if device is not None else model.W_E.device
    total, n = 0.0, 0
    for i, batch in enumerate(data_loader):
        if i >= truncate:
            break
        tokens = batch["tokens"] if isinstance(batch, dict) else batch
        total += float(model(tokens.to(device), return_type="loss"))
        n += 1
    if n == 0:
        raise ValueError("the data loader gave no batches")
    return total / n
