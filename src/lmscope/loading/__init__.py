"""Loading: name or path -> checkpoint -> family adapter -> HookedTransformer, streaming tensors.

`from_pretrained` accepts a short alias (`gpt2`, `pythia-70m`, `smollm2-135m`), a Hugging Face repo
id (fetched through huggingface_hub's cache; offline it uses what is cached), a local directory
written by `save_pretrained`, or a `.gguf` file. Any checkpoint whose `architectures` entry a family
supports loads; there is no closed list of official names.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.config import HookedTransformerConfig, check_dtype_runs, resolve_dtype
from lmscope.devices import DeviceRequest, place
from lmscope.errors import CheckpointError, CheckpointNotFoundError
from lmscope.hooks import HookedRootModule
from lmscope.loading import gguf_cache as _gguf_cache
from lmscope.loading import processed_cache as _processed_cache
from lmscope.loading.checkpoint import Checkpoint, DirectoryCheckpoint, copy_into
from lmscope.loading.embedded import EMBEDDED_MODELS, embedded_model_path
from lmscope.loading.families import family_for, supported_architectures
from lmscope.loading.hf_model import HFModelCheckpoint
from lmscope.loading.language_model import language_model_view
from lmscope.loading.pieces import source_names, view_name
from lmscope.loading.pretrained_args import (
    first_layers,
    hf_keyword_arguments,
    training_checkpoint_revision,
)
from lmscope.loading.registry import MODEL_ALIASES
from lmscope.loading.registry import default_prepend_bos as architecture_prepends_bos
from lmscope.loading.transforms import Transform
from lmscope.memory import release_freed_memory
from lmscope.model import HookedTransformer, check_padding_side
from lmscope.processing import (
    Staging,
    Unit,
    finish_processing,
    plan_steps,
    process_unit,
    processed_structure,
    processing_units,
    staged_params,
    staging_dtype,
    unit_has_work,
)
from lmscope.processing import refactor_factored_attn_matrices as refactor_attn

__all__ = [
    "MODEL_ALIASES",
    "from_pretrained",
    "load_weights",
    "open_checkpoint",
    "supported_architectures",
]

_WEIGHT_PATTERNS = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "*.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "generation_config.json",
]


def _known_names() -> list[str]:
    return sorted(set(MODEL_ALIASES) | set(EMBEDDED_MODELS))


def _from_hub(
    repo_id: str, revision: str | None, trust_remote_code: bool, cache_dir: str | os.PathLike | None
) -> DirectoryCheckpoint:
    """Download (or find in the huggingface_hub cache) the files lmscope needs from a hub repo."""
    from huggingface_hub import snapshot_download

    def fetch(patterns: list[str], local_only: bool) -> str:
        return snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            local_files_only=local_only,
        )

    try:
        path = fetch(_WEIGHT_PATTERNS, local_only=False)
    except Exception as err:  # offline or unreachable: the cache may still have the snapshot
        try:
            path = fetch(_WEIGHT_PATTERNS, local_only=True)
        except Exception:
            raise OSError(
                f"could not fetch {repo_id!r} from the Hugging Face hub and it is not in the local cache "
                f"({err.__class__.__name__}: {err}). Connect to the internet once, or pass a local directory."
            ) from None
    if not any(Path(path).glob("*.safetensors")):  # old repos ship only pytorch_model.bin
        try:
            path = fetch([*_WEIGHT_PATTERNS, "pytorch_model*.bin"], local_only=False)
        except Exception:
            path = fetch([*_WEIGHT_PATTERNS, "pytorch_model*.bin"], local_only=True)
    return DirectoryCheckpoint(path, trust_remote_code=trust_remote_code)


def open_checkpoint(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
    gguf_cache: bool = False,
    verbose: bool = True,
) -> Checkpoint:
    """Find the checkpoint behind an alias, local path, .gguf file or hub id. With `gguf_cache`,
    a GGUF file is read from its dequantised copy in lmscope's cache, or copied there as it is
    read (`lmscope.loading.gguf_cache`; `verbose` shows the first read's progress)."""
    name = str(name_or_path)
    if name.lower() in EMBEDDED_MODELS:
        path = embedded_model_path(name.lower())
        if path.is_dir():  # a model directory shipped zipped (an encoder)
            return DirectoryCheckpoint(path)
        return _gguf_cache.open_gguf(path, gguf_cache, verbose)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix == ".gguf" or _starts_with(path, b"GGUF"):
            return _gguf_cache.open_gguf(path, gguf_cache, verbose)
        raise CheckpointError(
            f"{path} is a file, but lmscope loads a model directory (with config.json and "
            f"weights) or a .gguf file; pass the directory {path.parent}"
        )
    if path.is_dir():
        return DirectoryCheckpoint(path, trust_remote_code=trust_remote_code)
    if name.lower() in MODEL_ALIASES:
        return _from_hub(MODEL_ALIASES[name.lower()], revision, trust_remote_code, cache_dir)
    if _looks_like_path(name, path):
        raise CheckpointNotFoundError(f"no such file or directory: {path}")
    if name.count("/") == 1:
        return _from_hub(name, revision, trust_remote_code, cache_dir)
    close = difflib.get_close_matches(name.lower(), _known_names(), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}: not an alias, a local directory, a .gguf file or a hub id (org/name).{hint} "
        "`lmscope.loading.MODEL_ALIASES` lists the aliases."
    )


def _starts_with(path: Path, magic: bytes) -> bool:
    """Whether the file at `path` begins with `magic` (GGUF files begin with b"GGUF")."""
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _looks_like_path(name: str, path: Path) -> bool:
    """Whether `name` can only mean a local path: absolute, relative to . or ~, more than one
    "/" (a hub id has one), or ending in a checkpoint file's suffix."""
    return (
        path.is_absolute()
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or path.suffix in (".gguf", ".safetensors", ".bin", ".json")
    )


def _overlaps(tensor: Tensor) -> bool:
    """Whether two elements of `tensor` share memory (a stride-0 expand): such a tensor cannot
    become a parameter, whose every element must have its own place."""
    reach = 0
    for stride, size in sorted(
        (s, n) for n, s in zip(tensor.shape, tensor.stride(), strict=True) if n > 1
    ):
        if stride <= reach:
            return True
        reach += stride * (size - 1)
    return False


def _adopt(param: Tensor, tensor: Tensor) -> bool:
    """Make `param` use `tensor`'s memory: a checkpoint tensor read for keeping, or a view of one
    (a row block of a fused projection, a transposed Conv1D: then `param` is strided over the
    file's memory). No copy is made: a safetensors tensor stays a private copy-on-write map of
    the file, and a load costs what HF's does (every weight of Llama-like and GPT-2 checkpoints
    is adopted; weights that need a real rewrite are adopted as the rewrite's fresh result).
    """
    if (
        tensor.dtype != param.dtype
        or tensor.device != param.device
        or tensor.requires_grad
        or tensor.shape != param.shape
        or param.numel() == 0
        or _overlaps(tensor)
    ):
        return False
    param.data = torch.empty(0, dtype=param.dtype, device=param.device).set_(
        tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride()
    )
    return True


@torch.no_grad()
def load_weights(
    model: HookedRootModule,  # a HookedTransformer or an encoder: it has named_weights()
    weight_map: dict[str, Any],
    checkpoint: Checkpoint,
    adopt: bool = True,
    process: dict[str, bool] | None = None,
    unread: frozenset[str] = frozenset(),
) -> None:
    """Load each mapped checkpoint tensor into the model parameter the weight map names.

    A weight map names the model's storage parameters (`model.named_parameters()`), which hold
    the weights in the checkpoint's own layout, each with a checkpoint tensor name or
    `(transform, name, ...)` (`lmscope.loading.families`). With `adopt`, a parameter whose
    source (or a view of it) has its dtype takes the source's memory without a copy (`_adopt`);
    the rest are read (cast when the model's dtype differs) into the model's memory, tensor by
    tensor. `process` (steps from `lmscope.processing.plan_steps`) loads and processes one unit
    (embeddings, block, unembedding) at a time instead: see `_load_processed`.
    Every weight matrix must be mapped; biases and norm weights left out keep their defaults
    (zeros and ones), which is what a checkpoint without them means. `unread` names checkpoint
    tensors left out on purpose (the blocks `first_n_layers` drops). A map may also name
    TransformerLens weight views (`named_weights`: `blocks.0.attn.W_Q`); those are copied into
    the view.

    Example:
        >>> load_weights(model, family.weight_map(model.cfg, checkpoint.hf_config), checkpoint)
    """
    params = dict(model.named_parameters())
    # (weight views only when the map names some: building them walks the model)
    views = model.named_weights() if any(n not in params for n in weight_map) else {}
    unknown = sorted(set(weight_map) - set(params) - set(views))
    if unknown:
        raise KeyError(f"the family adapter maps weights this model does not have: {unknown[:5]}")
    _check_matrices_mapped(weight_map, params, views)
    check_sources(weight_map, checkpoint, unread)
    if process is None:
        _load_params(model, weight_map, checkpoint, adopt, params=params)
    else:
        _load_processed(model, weight_map, checkpoint, process)


def _check_matrices_mapped(
    weight_map: dict[str, Any], params: dict[str, Tensor], views: dict[str, Tensor]
) -> None:
    """Every parameter that is a matrix needs a source, in the map under its own name or under
    a view of it (a bias or norm weight left out keeps its default)."""
    covered = {id(params[n]) for n in weight_map if n in params}
    for name in weight_map:
        if name not in params:
            covered |= {id(p) for p in _owner(name, views[name], params).values()}
    for name, param in params.items():
        if param.ndim >= 2 and id(param) not in covered:
            raise KeyError(
                f"the family adapter does not map {view_name(name)} ({name}); every weight "
                "matrix needs a source"
            )


def _load_processed(
    model: HookedTransformer,
    weight_map: dict[str, Any],
    checkpoint: Checkpoint,
    steps: dict[str, bool],
) -> None:
    """Load and process the model one unit at a time (`processing_units`): the unit's weights are
    read into float32 working buffers (float64 for a float64 model; reused from block to block),
    processed there, and written once in the model's dtype. So the result equals float32
    processing followed by one cast, and no float32 copy of the whole model ever exists.

    Processing rewrites the weights, and the first write to each page of a file map costs a
    copy-on-write fault, measured ~15x slower than copying into fresh memory (1.3 s against
    0.09 s for SmolLM2), so written weights get fresh memory. The weights processing leaves as
    they were (the embedding, W_O and W_out of RMSNorm models) are loaded as an unprocessed load
    loads them, adopted without a copy where dtype and layout allow, when the checkpoint reads
    cheaply (`reads_into`; a GGUF tensor would be dequantised twice). Float32 weights get working
    buffers only to find those, so not under centring (LayerNorm models: it rewrites every
    weight), and not after a block showed none; they are read into their own memory and
    processed there.
    """
    units = processing_units(model)
    blocks = [u for u in units if isinstance(u.key, int)]
    # Float32 weights get working buffers only to find those processing leaves alone: none with
    # centring (it rewrites every writer, folding every reader), else in the first block of each
    # layout; the next blocks of that layout adopt those straight away (`_load_unit`).
    stage_all = not steps.get("center_writing_weights")
    kept: dict[frozenset[str], frozenset[str]] = {}  # a block layout: the names it kept
    for group in ([u for u in units if u not in blocks], blocks):
        staging: Staging = {}  # the embeddings' big buffers go before the blocks fill the model
        for unit in group:
            block = unit in blocks
            _load_unit(
                model, unit, weight_map, checkpoint, steps, staging, block and stage_all,
                kept if block else None,
            )  # fmt: skip
        del staging
        release_freed_memory()  # tune_malloc would keep them
    rest = {n for n in weight_map if not any(u.owns(n) for u in units)}
    _load_params(model, weight_map, checkpoint, False, rest.__contains__)
    finish_processing(model, steps)


def _load_unit(
    model: HookedTransformer,
    unit: Unit,
    weight_map: dict[str, Any],
    checkpoint: Checkpoint,
    steps: dict[str, bool],
    staging: Staging,
    every: bool,
    kept: dict[frozenset[str], frozenset[str]] | None = None,
) -> None:
    """Load one unit into working buffers from `staging`, process it, and write it back (see
    `_load_processed`); a unit that processing leaves alone loads as an unprocessed load does.
    Half-precision parameters always get working buffers, the others only with `every` (else
    they are processed in their own memory). The weights processing leaves alone are adopted,
    or read, from the checkpoint again; `kept` remembers them per unit layout (the names
    within the unit), and a later unit of that layout adopts them before processing, with no
    working buffer and, for float32 weights, none for the others either."""
    params = _unit_params(unit)
    if not unit_has_work(model, unit, steps):
        _load_params(model, weight_map, checkpoint, True, unit.owns, params)
        return
    relative = _relative_names(unit, params)
    layout = frozenset(relative.values())
    known = None if kept is None else kept.get(layout)
    first: set[str] = set()
    if known and checkpoint.reads_into:
        # Adopted first where the checkpoint's dtype allows: processing writes none of them
        # (were one written, a private map copies the page), and, being in the working dtype,
        # they get no working buffer (`every` is off below). Not in half precision, where
        # processing reads them (value-bias folding reads W_O) from float32 working buffers that
        # would map the file's pages into RSS during the load (peak RSS 1.02x -> 1.07x the
        # weights, 2 GB bfloat16 checkpoint); those are read into their buffers as before.
        candidates = {
            name
            for name in weight_map
            if relative.get(name) in known and name in params
            and params[name].dtype == staging_dtype(params[name].dtype)
        }  # fmt: skip
        first = set(
            _load_params(model, weight_map, checkpoint, True, candidates.__contains__, params, True)
        )
    every = every and known is None
    with staged_params(unit.modules, staging, fill=False, every=every) as staged:
        owners = _load_params(
            model, weight_map, checkpoint, False, lambda n: unit.owns(n) and n not in first, params
        )
        staged.mark()
        process_unit(model, unit, steps)
        unwritten = {id(p) for p in staged.unwritten()} if checkpoint.reads_into else set()
    params = _unit_params(unit)
    unwritten &= {id(p) for p in params.values()}  # not a folded norm's (replaced)
    again = {name for name, param in owners.items() if id(param) in unwritten}
    if again:
        _load_params(model, weight_map, checkpoint, True, again.__contains__, params)
    if kept is not None:
        kept.setdefault(layout, frozenset(relative[n] for n in first | again if n in relative))


def _relative_names(unit: Unit, params: dict[str, Tensor]) -> dict[str, str]:
    """{parameter name: its name within `unit`} for `params` (`_unit_params`): blocks of one
    layout share them (`blocks.3.attn.W_O` and `blocks.4.attn.W_O`: `0:attn.W_O`)."""
    relative = {}
    for name in params:
        i = next(i for i, prefix in enumerate(unit.prefixes) if name.startswith(prefix))
        relative[name] = f"{i}:{name[len(unit.prefixes[i]) :]}"
    return relative


def _unit_params(unit: Unit) -> dict[str, Tensor]:
    """{model parameter name: parameter} of `unit`'s modules alone: walking the whole model's
    modules (a thousand, hook points included) for each unit made a processed load quadratic
    in the layers (half of SmolLM2's processed load time)."""
    return {
        prefix + name: param
        for prefix, module in zip(unit.prefixes, unit.modules, strict=True)
        for name, param in module.named_parameters()
    }


def _load_params(
    model: HookedRootModule,
    weight_map: dict[str, Any],
    checkpoint: Checkpoint,
    adopt: bool,
    owns: Callable[[str], bool] = lambda name: True,
    params: dict[str, Tensor] | None = None,
    adopt_only: bool = False,
) -> dict[str, Tensor]:
    """Load the mapped weights whose names `owns` accepts (see `load_weights`), into `params`
    (default: all the model's parameters; a unit's own, when it loads one unit). Returns {name:
    the parameter that holds it}. With `adopt_only`, only the weights that can be adopted are
    loaded (and returned)."""
    params = dict(model.named_parameters()) if params is None else params
    views: dict[str, Tensor] | None = None
    loaded: dict[str, Tensor] = {}
    for name, source in weight_map.items():
        if not owns(name):
            continue
        transform, *names = (None, source) if isinstance(source, str) else source
        param = params.get(name)
        try:
            if param is None and adopt_only:
                continue
            if param is None:  # a weight view (`named_weights`): copied into it
                views = model.named_weights() if views is None else views
                view = views[name]
                tensor = _read(transform, names, view, checkpoint, keep=False)
                if view.ndim == 2 and not view.is_contiguous() and view.T.is_contiguous():
                    view, tensor = view.T, tensor.T  # torch's blocked transpose, not a strided copy
                copy_into(view, tensor)
                loaded.update(_owner(name, views[name], params))
                continue
            loaded[name] = param
            if transform is None and not adopt:
                checkpoint.get(names[0], out=param)  # read straight into the parameter
                continue
            tensor = _read(transform, names, param, checkpoint, keep=adopt)
            if adopt and _adopt(param, tensor):
                continue
            if adopt_only:
                del loaded[name]
                continue
            if transform is None and checkpoint.reads_into:
                checkpoint.get(names[0], out=param)  # another dtype: read and cast in chunks
                continue
        except (ValueError, RuntimeError) as err:  # RuntimeError: a transform's reshape
            if isinstance(err, CheckpointError) and str(checkpoint.path) in str(err):
                raise
            files = ", ".join(sorted({str(checkpoint.file_of(n)) for n in names}))
            raise CheckpointError(
                f"{files}: {view_name(name)}: {err} (reading {', '.join(names)})"
            ) from None
        copy_into(param, tensor)
    return loaded


def _read(
    transform: Transform | None,
    names: list[str],
    target: Tensor,
    checkpoint: Checkpoint,
    keep: bool,
) -> Tensor:
    """The checkpoint tensors `names` through `transform`: the weight for `target`. Their shapes
    are checked first, in the checkpoint's own layout, so an error names the file's shapes."""
    sources = [checkpoint.get(n, keep=keep) for n in names]
    try:
        shapes = (
            [tuple(target.shape)] if transform is None else transform.source_shapes(target.shape)
        )
    except NotImplementedError:  # a transform that cannot say (a product): its result is checked
        shapes = [tuple(s.shape) for s in sources]
    for tensor, shape in zip(sources, shapes, strict=True):
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(
                f"the checkpoint gives shape {tuple(tensor.shape)}, the model expects {tuple(shape)}"
            )
    result = sources[0] if transform is None else transform(*sources)
    if result.shape != target.shape:
        raise ValueError(
            f"the checkpoint gives shape {tuple(result.shape)}, the model expects {tuple(target.shape)}"
        )
    return result


def _owner(name: str, view: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """{name: the parameter the weight view `view` lies in} ({} if none of `params`)."""
    ptr = view.untyped_storage().data_ptr()
    found = [p for p in params.values() if p.untyped_storage().data_ptr() == ptr]
    return {name: found[0]} if found else {}


# Buffers some checkpoints carry beside their weights, holding nothing a model needs: causal
# masks (GPT-2, GPT-J, GPT-Neo, GPT-NeoX, CodeGen) and rotary inverse frequencies.
_HARMLESS_BUFFERS = (
    ".attn.bias",
    ".attn.masked_bias",
    ".attention.bias",
    ".attention.masked_bias",
    ".attn.causal_mask",
    ".rotary_emb.inv_freq",
)


def check_sources(
    weight_map: dict[str, Any], checkpoint: Checkpoint, unread: frozenset[str] = frozenset()
) -> None:
    """Every tensor the weight map reads must be in the checkpoint (MissingTensorError), and
    every tensor of the checkpoint must be read (CheckpointError naming the rest), except
    known harmless buffers, an `lm_head.weight` equal to the embedding a tied model uses, and
    the tensors named in `unread` (left out on purpose)."""
    used = {checkpoint.resolve(n) for source in weight_map.values() for n in source_names(source)}
    used |= unread
    unread = [n for n in checkpoint.unread_tensors(used) if not n.endswith(_HARMLESS_BUFFERS)]
    unread = [n for n in unread if not _is_tied_copy(n, weight_map, checkpoint)]
    if unread:
        shown = ", ".join(unread[:8]) + (f", ... ({len(unread)} in all)" if len(unread) > 8 else "")
        config = checkpoint.config_file
        raise CheckpointError(
            f"{checkpoint.path}: the checkpoint holds tensors that the model {config} "
            f"describes does not use: {shown}. lmscope does not ignore weights: if {config.name} "
            "belongs to another model (more layers, other sizes or options), fix it; if the "
            "tensors do not belong to this model, remove them from the checkpoint"
        )


def _is_tied_copy(name: str, weight_map: dict[str, Any], checkpoint: Checkpoint) -> bool:
    """Whether the unread `name` is a tied model's duplicate `lm_head.weight`, equal to the
    embedding the unembedding reads (a different head is an error: it would be ignored)."""
    head = weight_map.get("unembed.weight") or weight_map.get("unembed.W_U")  # W_U: a view map
    unembed = source_names(head or ())
    if not name.endswith("lm_head.weight") or len(unembed) != 1:
        return False
    head, embedding = checkpoint.get(name), checkpoint.get(unembed[0])
    if head.shape == embedding.shape and torch.equal(head, embedding):
        return True
    raise CheckpointError(
        f"{checkpoint.path}: {checkpoint.config_file.name} ties the unembedding to the embedding "
        f"(tie_word_embeddings), but the checkpoint's {name} differs from {unembed[0]}; if the "
        'model has its own output head, set "tie_word_embeddings": false in config.json'
    )


def _model_config(
    checkpoint: Checkpoint, model_name: str, overrides: dict[str, Any], dtype: torch.dtype
) -> tuple[Any, HookedTransformerConfig]:
    """The family and HookedTransformerConfig of a checkpoint, with any failure to read its
    config (unsupported architecture, missing or ill-typed fields) as a CheckpointError naming
    the config file."""
    source = checkpoint.config_file
    hf_config = checkpoint.hf_config
    _check_layer_count(checkpoint)
    _refuse_encoder(checkpoint)
    try:
        family = family_for(hf_config)
    except ValueError as err:
        custom = isinstance(hf_config.get("auto_map"), dict)
        hint = (
            " It names its own modelling code (auto_map); lmscope never runs a checkpoint's "
            "modelling code, whatever trust_remote_code says, and implements each family itself."
            if custom
            else ""
        )
        raise CheckpointError(f"{source}: {err}.{hint}") from None
    try:
        fields = family.config_from_hf(hf_config)
        fields.update(
            model_name=model_name,
            original_architecture=(hf_config.get("architectures") or [family.name])[0],
            init_weights=False,
            from_checkpoint=True,
            dtype=dtype,
        )
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as err:
        raise CheckpointError(
            f"{source}: not a usable {family.name} config ({type(err).__name__}: {err}); fix or "
            "replace the config"
        ) from None
    fields.update(overrides)
    given = f" with the overrides {sorted(overrides)}" if overrides else ""
    try:
        cfg = HookedTransformerConfig(**fields)
    except (TypeError, ValueError, ArithmeticError) as err:
        raise CheckpointError(f"{source}{given}: not a valid model config: {err}") from None
    sizes = {k: getattr(cfg, k) for k in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab")}
    bad = {k: v for k, v in sizes.items() if not (isinstance(v, int) and v > 0)}
    if bad:
        raise CheckpointError(f"{source}{given}: not a valid model config: {bad} must be >= 1")
    return family, cfg


def _refuse_encoder(checkpoint: Checkpoint) -> None:
    """Refuse an encoder or encoder-decoder checkpoint (BERT, T5), naming the class that loads
    it: a HookedTransformer is a decoder-only model."""
    from lmscope.loading.encoder_families import encoder_family_for

    found = encoder_family_for(checkpoint.hf_config)
    if found is not None:
        archs = checkpoint.hf_config.get("architectures") or [found[0].name]
        raise CheckpointError(
            f"{checkpoint.config_file}: {archs[0]} is an encoder"
            f"{'-decoder' if found[1] == 'HookedEncoderDecoder' else ''} checkpoint, not a "
            f"decoder-only language model: load it with lmscope.{found[1]}.from_pretrained"
        )


def _check_layer_count(checkpoint: Checkpoint) -> None:
    """Refuse a config.json layer count beyond the number of tensors (every layer has some)
    before anything loops over the layers."""
    tensors = len(checkpoint.tensor_names())
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        layers = checkpoint.hf_config.get(key)
        if isinstance(layers, int) and layers > tensors:
            raise CheckpointError(
                f"{checkpoint.config_file}: {key} is {layers}, but {checkpoint.path} holds only "
                f"{tensors} tensors; the config belongs to another model or is corrupt"
            )


def _check_fits(cfg: HookedTransformerConfig, checkpoint: Checkpoint) -> None:
    """Refuse a config that describes a much larger model than the checkpoint holds, before
    allocating it (a corrupt layer count or width would otherwise allocate, or loop, without
    bound before any tensor is found missing)."""
    held = checkpoint.n_elements()
    layers, tensors = cfg.n_layers, len(checkpoint.tensor_names())
    needed = cfg.d_vocab * cfg.d_model + (cfg.n_params if cfg.d_mlp is not None else 0)
    if layers > tensors or needed > 2 * held + 2**20:
        raise CheckpointError(
            f"{checkpoint.config_file}: the config describes a model of {layers} layers and "
            f"about {needed:,} values, but {checkpoint.path} holds {tensors} tensors of "
            f"{held:,} values; the config belongs to another model or is corrupt"
        )


def from_pretrained(
    model_name: str | os.PathLike,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    n_devices: int | None = None,
    move_to_device: bool = True,
    tokenizer: Any = None,
    hf_model: Any = None,
    default_prepend_bos: bool | None = None,
    default_padding_side: str | None = None,
    first_n_layers: int | None = None,
    checkpoint_index: int | None = None,
    checkpoint_value: int | None = None,
    checkpoint_label: int | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
    gguf_cache: bool | None = None,
    processed_cache: bool | None = None,
    verbose: bool = True,
    **config_overrides: Any,
) -> HookedTransformer:
    """Load a checkpoint into a HookedTransformer.

    The model is built in `dtype` without initialisation and the weights stream into it tensor
    by tensor (adopted without a copy where the checkpoint's dtype and layout allow), so peak
    memory is about one model in `dtype`. Processing (fold_ln, centring, value-bias folding) runs
    one block at a time in float32 (float64 for a float64 model) and writes each block in
    `dtype`. Extra keyword arguments override HookedTransformerConfig fields (`n_ctx=...`);
    `torch_dtype` is an alias of `dtype`.
    `default_prepend_bos` defaults to TransformerLens's choice for the architecture (True
    unless its model table says False: docs/models.md, column BOS). TransformerLens's
    arguments work as there: `first_n_layers` loads the first blocks only,
    `checkpoint_index`/`checkpoint_value` pick a Pythia training checkpoint (a hub revision),
    `hf_model` reads an already-loaded `transformers` model (its config and state_dict, no
    file), `move_to_device=False` leaves the model on the CPU with `cfg.device` set for
    `model.move_model_modules_to_device()`, `default_padding_side` sets the padding side.
    `device_map` ("auto" or a dict naming each part's device) or `n_devices` (blocks split
    evenly over cuda:0 ... cuda:N-1) spread the model over several devices (docs/devices.md).
    A GGUF file is dequantised once and kept in lmscope's cache (docs/gguf-cache.md);
    `gguf_cache=False` (or `LMSCOPE_GGUF_CACHE=0`) reads it directly every time. A processed
    load keeps its processed weights in lmscope's cache, so that the next processed load of the
    same files maps them instead of processing again (docs/loading.md);
    `processed_cache=False` (or `LMSCOPE_PROCESSED_CACHE=0`) processes every time.
    `verbose=False` hides the progress bar a slow first read shows on a terminal.

    Example:
        >>> model = from_pretrained("smollm2-135m", device="cpu")
    """
    config_overrides, dtype = hf_keyword_arguments(config_overrides, dtype)
    dtype = resolve_dtype(dtype)
    if not move_to_device and (device_map is not None or (n_devices or 1) > 1):
        raise ValueError("move_to_device=False cannot spread the model (device_map/n_devices)")
    devices = DeviceRequest.check(device_map, n_devices, device, dtype)
    if devices is None and n_devices is not None and device is None:
        device = "cuda"  # n_devices=1: the first GPU, as TransformerLens
    if devices is None:
        check_dtype_runs(dtype, device)
    if default_padding_side is not None:
        check_padding_side(default_padding_side, "default_padding_side")
    hub_id = MODEL_ALIASES.get(str(model_name).lower(), str(model_name))
    revision = training_checkpoint_revision(
        hub_id, revision, checkpoint_index, checkpoint_value, checkpoint_label
    )
    if hf_model is not None:
        checkpoint: Any = HFModelCheckpoint(hf_model)
    else:
        checkpoint = open_checkpoint(
            model_name,
            revision,
            trust_remote_code,
            cache_dir,
            _gguf_cache.cache_enabled(gguf_cache),
            verbose,
        )
    checkpoint = language_model_view(checkpoint)  # a multimodal checkpoint: its text model
    family, cfg = _model_config(checkpoint, str(model_name), config_overrides, dtype)
    left_out = family.left_unread(checkpoint.tensor_names(), checkpoint.hf_config)  # MTP heads
    if first_n_layers is not None:
        cfg, dropped = first_layers(family, cfg, first_n_layers, checkpoint)
        left_out |= dropped
    if devices is not None:
        devices.check_layers(cfg.n_layers)
    _check_fits(cfg, checkpoint)
    weight_map = family.weight_map(cfg, checkpoint.hf_config)
    model = _empty_model(cfg, device if move_to_device and devices is None else None)
    if devices is not None:
        place(model, devices.plan(model))  # before the weights, so each streams to its device
    model.hf_config = dict(checkpoint.hf_config)  # what export writes back (save_pretrained)
    steps = plan_steps(
        cfg,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    _load_processed_or_kept(
        model, weight_map, checkpoint, steps, left_out, processed_cache, verbose
    )
    if refactor_factored_attn_matrices:
        refactor_attn(model)
    checkpoint = _gguf_cache.commit(checkpoint)  # a GGUF file read for the first time
    load_tokenizer = checkpoint.tokenizer_loader() if tokenizer is None else None
    if default_prepend_bos is None:
        default_prepend_bos = architecture_prepends_bos(cfg.original_architecture)
    if tokenizer is not None:
        model.set_tokenizer(tokenizer, default_prepend_bos=default_prepend_bos)
    elif load_tokenizer is not None:
        model.set_tokenizer_loader(load_tokenizer, default_prepend_bos)
    else:
        cfg.default_prepend_bos = default_prepend_bos
    if default_padding_side is not None:
        cfg.default_padding_side = default_padding_side
    if devices is None and device is not None:
        cfg.device = str(device)
    return model


def _load_processed_or_kept(
    model: HookedTransformer,
    weight_map: dict[str, Any],
    checkpoint: Checkpoint,
    steps: dict[str, bool],
    unread: frozenset[str] | set[str],
    cache: bool | None,
    verbose: bool,
) -> None:
    """Load the weights, processed with `steps`: from the processed-weights cache when an earlier
    load kept them (mapped as an unprocessed load maps a checkpoint), else from the checkpoint,
    processing them, and then keep them (`lmscope.loading.processed_cache`)."""
    key = None
    if steps and _processed_cache.cache_enabled(cache):
        key = _processed_cache.entry_key(checkpoint, model, steps, unread)
    kept = _processed_cache.lookup(key) if key is not None else None
    if kept is not None:
        processed_structure(model, steps)
        load_weights(model, kept.weight_map(model), kept.checkpoint, unread=kept.padding)
        return
    load_weights(model, weight_map, checkpoint, process=steps or None, unread=unread)
    if key is not None:
        _processed_cache.store(key, model, verbose)


def _empty_model(
    cfg: HookedTransformerConfig, device: str | torch.device | None
) -> HookedTransformer:
    """The model with uninitialised weights in `cfg.dtype`, built on `device` (default: the CPU),
    so that the weights load (and are processed) straight into it: a model for a GPU never has
    a copy in host memory, and no float32 copy of a half-precision model exists anywhere."""
    if device is None or torch.device(device).type == "cpu":
        return HookedTransformer(cfg)
    with torch.device(device):
        return HookedTransformer(cfg)
