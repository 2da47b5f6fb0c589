"""The UMT5-XXL text encoder: transformers' `UMT5EncoderModel` loaded from the published files, plus the reference's
`T5EncoderModel.__call__` (clean, tokenize to 512 with `</s>`, encode, trim each output to its real length).

Accepted weights:
- the official `models_t5_umt5-xxl-enc-bf16.pth` (read with `weights_only=True`, names mapped by `keymap`), or the
  official checkpoint folder that holds it (its `google/umt5-xxl/` is then the tokenizer);
- ComfyUI's `umt5_xxl_fp16.safetensors` / `umt5_xxl_fp8_e4m3fn_scaled.safetensors` (dequantized; the tokenizer is
  read from the `spiece_model` tensor they carry);
- a transformers folder (`config.json` + `model*.safetensors`, e.g. diffusers' `text_encoder/`; its tokenizer is
  `../tokenizer/`);
- a GGUF file (city96's `umt5-xxl-encoder-Q8_0.gguf`, `-Q5_K_M.gguf`, ...: llama.cpp names, dequantized on the load's
  device by `gguf_weights`; the tokenizer is rebuilt from the file's `tokenizer.ggml` metadata, or, where it has
  none, read from a folder beside it such as `google/umt5-xxl/`).
Without a `config.json` the architecture is read from the weights' shapes.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..errors import (
    ConfigMismatchError,
    InputError,
    KeyMismatchError,
    MissingFileError,
    describe_key_mismatch,
    describe_keys,
)
from ..finite import check_weight_dtypes, scan_weights
from ..io.files import find_weight_files
from ..io.gguf_file import GGUFFile, is_gguf
from ..io.mapped_safetensors import DroppingStateDict, PageDropper, read_mapped
from ..io.quant import dequantize, is_quantized
from ..io.state_dict import (
    FP8_DTYPES,
    cast_floating,
    is_torch_file,
    read_safetensors_metadata,
    read_torch_file,
)
from ..memory import out_of_memory
from .gguf_weights import check_complete, dequantized, meta_tensors, open_gguf, spiece_model
from .keymap import EMBED_TOKENS, SHARED, SPIECE_MODEL, to_transformers
from .tokenizer import (
    TINY_UMT5_CONFIG,
    UMT5Tokenizer,
    build_tiny_umt5,
    find_tokenizer_near,
    load_tokenizer,
    tokenizer_from_spiece,
)

__all__ = [
    "OFFICIAL_FILENAME",
    "TINY_UMT5_CONFIG",
    "TextEncoder",
    "build_tiny_umt5",
    "infer_config",
    "load_text_encoder",
    "text_encoder_from_state_dict",
]

logger = logging.getLogger(__name__)

OFFICIAL_FILENAME = "models_t5_umt5-xxl-enc-bf16.pth"
_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")
_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}
# The config values that the weights' shapes fix, compared with a config.json when there is one.
_SHAPE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "d_kv", "d_ff", "relative_attention_num_buckets")


# ------------------------------------------------------------------------------------------------ encode cache


class _EncodeCache:
    """A bounded LRU of encoder outputs (kept on the CPU), keyed by (model identity, dtype, prompt)."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 512 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if self.max_entries <= 0 or size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.numel() * old.element_size()
            self._items[key] = value
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.numel() * dropped.element_size()

    def clear(self, identity: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._items if identity is None or k[0] == identity]:
                self._bytes -= self._items[key].numel() * self._items[key].element_size()
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


ENCODE_CACHE = _EncodeCache()
"""Shared by every `TextEncoder` of the process, so that reloading the same file keeps its cached prompts."""


# ------------------------------------------------------------------------------------------------- the encoder


class TextEncoder:
    """A `UMT5EncoderModel` and its tokenizer, called like the reference's `T5EncoderModel`.

    `encode(prompts)` returns one `[L_i, d_model]` tensor per prompt on the model's device in the model's dtype,
    `L_i` being the prompt's real token count (its `</s>` included, at most 512).
    """

    def __init__(
        self,
        model,
        tokenizer: UMT5Tokenizer,
        *,
        identity: str | None = None,
        batch_size: int = 8,
        cache: _EncodeCache | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.identity = identity or f"memory:{uuid.uuid4().hex}"
        self.batch_size = max(1, int(batch_size))
        self.cache = ENCODE_CACHE if cache is None else cache
        vocab = model.config.vocab_size
        if tokenizer.vocab_size > vocab:
            raise ConfigMismatchError(
                f"The tokenizer ({tokenizer.source}) has {tokenizer.vocab_size} tokens but the model's vocabulary has "
                f"only {vocab}: this tokenizer belongs to another model. Use the umt5-xxl tokenizer "
                "(google/umt5-xxl/ of the official checkpoint)."
            )

    def __repr__(self) -> str:
        c = self.model.config
        return (
            f"TextEncoder(d_model={c.d_model}, layers={c.num_layers}, vocab={c.vocab_size}, device={self.device}, "
            f"dtype={self.dtype}, tokenizer={self.tokenizer.source!r})"
        )

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def d_model(self) -> int:
        return self.model.config.d_model

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> TextEncoder:
        """Move (and optionally cast) the model in place; returns self. The cache stays valid across devices."""
        self.model.to(device=device, dtype=_resolve_dtype(dtype))
        return self

    def clear_cache(self) -> None:
        self.cache.clear(self.identity)

    def _key(self, prompt: str) -> tuple:
        return (self.identity, self.tokenizer.identity, str(self.dtype), prompt)

    @torch.no_grad()
    def _run(self, prompts: list[str]) -> list[torch.Tensor]:
        ids, mask = self.tokenizer(prompts)
        device = self.device
        ids, mask = ids.to(device), mask.to(device)
        seq_lens = mask.gt(0).sum(dim=1).tolist()
        out: list[torch.Tensor] = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                chunk = slice(start, start + self.batch_size)
                hidden = self.model(input_ids=ids[chunk], attention_mask=mask[chunk]).last_hidden_state
                out += [u[:n] for u, n in zip(hidden.to(self.dtype), seq_lens[chunk], strict=True)]
        except torch.cuda.OutOfMemoryError as err:
            fixes = ["run the text encoder on the CPU (t5_cpu; in ComfyUI Set Device cpu on the T5 Loader's output)",
                     "free this GPU of other models first (offload_model for the DiT experts)"]
            raise out_of_memory("encoding prompts with the text encoder", device, fixes) from err
        return out

    def encode(self, prompts: Sequence[str] | str) -> list[torch.Tensor]:
        """One `[L_i, d_model]` tensor per prompt, trimmed to its real length (`L_i` = attention-mask sum).

        A prompt encoded before by the same model (same file, tokenizer and dtype) comes from the cache without
        running the model.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise InputError(f"A prompt must be a str, not {type(prompt).__name__}.")
        found: dict[str, torch.Tensor] = {}
        todo: list[str] = []
        for prompt in dict.fromkeys(prompts):
            hit = self.cache.get(self._key(prompt))
            if hit is None:
                todo.append(prompt)
            else:
                found[prompt] = hit.to(self.device, copy=True)
        if todo:
            for prompt, value in zip(todo, self._run(todo), strict=True):
                self.cache.put(self._key(prompt), value.detach().to("cpu", copy=True))
                found[prompt] = value
        result, handed = [], set()
        for prompt in prompts:  # a prompt given twice gets two tensors, not one shared
            value = found[prompt]
            result.append(value.clone() if prompt in handed else value)
            handed.add(prompt)
        return result

    __call__ = encode


# ----------------------------------------------------------------------------------------------- config, model


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise InputError(f"Unknown dtype {dtype!r}: use bf16, fp16 or fp32 (or a torch.dtype).")
    return _DTYPES[key]


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """`UMT5Config` keyword arguments read from the shapes of transformers-named weights."""
    embedding = state_dict.get(SHARED, state_dict.get(EMBED_TOKENS))
    if embedding is None:
        raise KeyMismatchError(
            f"The weights have no token embedding ('{SHARED}' / 'token_embedding.weight'). They hold: "
            f"{describe_keys(list(state_dict))}."
        )
    layers = sorted({int(m[1]) for k in state_dict if (m := _BLOCK.match(k))})
    if not layers:
        raise KeyMismatchError(f"The weights have no encoder blocks. They hold: {describe_keys(list(state_dict))}.")
    absent = sorted(set(range(layers[-1] + 1)) - set(layers))
    if absent:
        raise KeyMismatchError(
            f"Encoder block(s) {absent} are missing from the weights (found blocks up to {layers[-1]}): the file is "
            "incomplete. Download it again."
        )

    def get(name: str) -> torch.Tensor:
        key = f"encoder.block.0.{name}"
        if key not in state_dict:
            raise KeyMismatchError(f"'{key}' is missing from the weights: the file is incomplete or not a UMT5.")
        return state_dict[key]

    if "encoder.block.0.layer.1.DenseReluDense.wi.weight" in state_dict:
        raise ConfigMismatchError(
            "These weights have a non-gated feed-forward ('DenseReluDense.wi'): a T5 v1.0 encoder, not UMT5."
        )
    if len(layers) > 1 and f"encoder.block.{layers[1]}.layer.0.SelfAttention.relative_attention_bias.weight" not in (
        state_dict
    ):
        raise ConfigMismatchError(
            "Only the first block has a relative position bias: this is a T5 / mT5 encoder (for example t5xxl), "
            "not UMT5 (one bias per block). Use umt5_xxl / models_t5_umt5-xxl-enc-bf16.pth."
        )
    buckets, heads = get("layer.0.SelfAttention.relative_attention_bias.weight").shape
    inner = get("layer.0.SelfAttention.q.weight").shape[0]
    if inner % heads:
        raise ConfigMismatchError(f"The attention width {inner} is not a multiple of the {heads} heads.")
    return {
        "vocab_size": int(embedding.shape[0]),
        "d_model": int(embedding.shape[1]),
        "num_layers": len(layers),
        "num_heads": int(heads),
        "d_kv": int(inner // heads),
        "d_ff": int(get("layer.1.DenseReluDense.wi_0.weight").shape[0]),
        "relative_attention_num_buckets": int(buckets),
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "dropout_rate": 0.0,
    }


def _make_config(inferred: dict, config_path: Path | None):
    from transformers import UMT5Config

    if config_path is None:
        return UMT5Config(**inferred)
    try:
        config = UMT5Config.from_json_file(str(config_path))
    except Exception as err:
        raise ConfigMismatchError(f"{config_path} is not a valid transformers config ({err}).") from err
    wrong = {
        f: (getattr(config, f, None), inferred[f]) for f in _SHAPE_FIELDS if getattr(config, f, None) != inferred[f]
    }
    if wrong:
        detail = ", ".join(f"{f}={cfg} (weights: {w})" for f, (cfg, w) in wrong.items())
        raise ConfigMismatchError(
            f"{config_path} does not match the weights beside it: {detail}. The config or the weights belong to "
            "another model; download the folder again."
        )
    config.dropout_rate = 0.0
    return config


def _build_model(config, state_dict: dict[str, torch.Tensor]):
    """A `UMT5EncoderModel` whose parameters are the given tensors (built on meta, loaded with assign: no copy)."""
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if SHARED not in state_dict and EMBED_TOKENS in state_dict:
        state_dict[SHARED] = state_dict[EMBED_TOKENS]
    state_dict.pop(EMBED_TOKENS, None)  # tied to shared.weight
    missing = sorted(set(expected) - set(state_dict) - {EMBED_TOKENS})
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise KeyMismatchError(
            f"The weights do not fit UMT5EncoderModel ({describe_key_mismatch(missing, unexpected)}). The file is "
            "incomplete or is not a umt5-xxl text encoder."
        )
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k])})" for k, v in state_dict.items() if v.shape != expected[k]
    ]
    if wrong:
        raise ConfigMismatchError(f"{len(wrong)} weight(s) have the wrong shape: {'; '.join(wrong[:4])}.")
    if EMBED_TOKENS in expected:
        state_dict[EMBED_TOKENS] = state_dict[SHARED]
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.encoder.embed_tokens.weight = model.shared.weight  # re-tie: one tensor, moved once by .to()
    stranded = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if stranded:  # pragma: no cover - the key check above prevents it
        raise KeyMismatchError(f"{len(stranded)} tensor(s) were not loaded: {describe_keys(stranded)}.")
    return model.eval().requires_grad_(False)


def _default_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype the weights are stored in; bf16 (the reference's) for fp8 files."""
    probe = next(
        (v for k, v in state_dict.items() if k.endswith(("SelfAttention.q.weight", "attn.q.weight", "attn_q.weight"))),
        None,
    )
    if probe is None or probe.dtype in FP8_DTYPES or not probe.is_floating_point():
        return torch.bfloat16
    return probe.dtype


def text_encoder_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    tokenizer: str | Path | UMT5Tokenizer | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    metadata: Mapping[str, str] | None = None,
    config_path: str | Path | None = None,
    identity: str | None = None,
    source: str = "<state dict>",
    consume: bool = False,
    pages: PageDropper | None = None,
) -> TextEncoder:
    """A `TextEncoder` from weights already in memory, in any supported naming (official, transformers, ComfyUI,
    fp8-scaled, llama.cpp). `tokenizer`: a tokenizer, a tokenizer folder/file, or None to use the weights'
    `spiece_model`. `consume`: `state_dict` (a dict) is emptied as its quantized weights are converted (a load's peak
    RAM is then the converted model, not both). `pages`: the memory-mapped files the weights are views of, dropped as
    they are read (a file load)."""
    sd = state_dict if consume else dict(state_dict)
    spiece = None
    for key in [k for k in sd if k.endswith(SPIECE_MODEL)]:
        spiece = sd.pop(key)
    dtype = _resolve_dtype(dtype) or _default_dtype(sd)
    if torch.device(device).type == "cuda":
        # Convert on the GPU: an fp8 file crosses the bus at its stored size and is dequantized and scanned there in
        # a fraction of the CPU's time (13-17 s for the fp8 UMT5-XXL on a GPU host). One tensor at a time: the peak is
        # the converted model, as on the CPU.
        sd = {key: sd.pop(key).to(device) for key in list(sd)}
    if is_quantized(sd):
        sd = dequantize(sd, dtype, dict(metadata or {}), consume=consume)
    sd = to_transformers(sd)
    check_weight_dtypes(sd, dict.fromkeys(sd, torch.float32), source)
    for key, value in sd.items():  # one tensor at a time: never a second full copy
        sd[key] = cast_floating(value, dtype)
    scan_weights(sd, source, read=pages.read if pages is not None else None)

    if isinstance(tokenizer, UMT5Tokenizer):
        tok = tokenizer
    elif tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif spiece is not None:
        tok = tokenizer_from_spiece(spiece, source=f"{source} (spiece_model)")
    else:
        raise MissingFileError(
            f"No tokenizer for {source}: pass tokenizer=<folder holding tokenizer.json or spiece.model> (the official "
            "checkpoint's google/umt5-xxl/), or use a ComfyUI umt5_xxl file, which carries its tokenizer."
        )

    inferred = infer_config(sd)
    config = _make_config(inferred, Path(config_path) if config_path is not None else None)
    model = _build_model(config, sd)
    del sd
    model.to(device)
    if pages is not None:
        pages.drop()
    return TextEncoder(model, tok, identity=identity)


# ------------------------------------------------------------------------------------------------------ loading


def _file_identity(paths: Sequence[Path]) -> str:
    parts = []
    for path in paths:
        stat = path.stat()
        parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return "file:" + "|".join(parts)


def _carries_spiece(files: Sequence[Path]) -> bool:
    """Whether the safetensors files hold a `spiece_model` tensor (read from their headers only). A header that
    cannot be read counts as yes: reading the weights then reports the broken file."""
    from safetensors import safe_open

    try:
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                if any(k.endswith(SPIECE_MODEL) for k in handle.keys()):
                    return True
    except Exception:  # a broken header: read_safetensors names the file
        return True
    return False


def _resolve_weights(path: Path) -> tuple[list[Path], Path | None]:
    """The weight file(s) that `path` names and the config.json beside them (transformers folders only)."""
    if path.is_file():
        return [path], None
    if not path.is_dir():
        raise MissingFileError(
            f"Text encoder {path} does not exist. Pass {OFFICIAL_FILENAME}, a ComfyUI umt5_xxl_*.safetensors file, "
            "a umt5-xxl-encoder-*.gguf file or a transformers folder (config.json + model.safetensors)."
        )
    if (path / OFFICIAL_FILENAME).is_file():  # the official checkpoint folder
        return [path / OFFICIAL_FILENAME], None
    if not (path / "config.json").is_file() and (path / "text_encoder").is_dir():  # a diffusers checkpoint folder
        path = path / "text_encoder"
    config = path / "config.json"
    try:
        files = find_weight_files(path, stem="model")
    except MissingFileError:
        single = [p for p in (path / "pytorch_model.bin",) if p.is_file()]
        if not single:
            raise
        files = single
    return files, config if config.is_file() else None


def _open_gguf(path: Path) -> GGUFFile:
    """A GGUF text encoder whose names and shapes (its header only) passed the other layouts' checks, so that a wrong
    or incomplete file fails before a tokenizer is sought and before gigabytes are dequantized."""
    file = open_gguf(path)
    check_complete(file, infer_config(to_transformers(meta_tensors(file)))["num_layers"])
    return file


def load_text_encoder(
    path: str | Path,
    *,
    tokenizer: str | Path | UMT5Tokenizer | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> TextEncoder:
    """Load the UMT5-XXL text encoder from `path` (see the module docstring for the layouts).

    `tokenizer`: a folder holding `tokenizer.json` and/or `spiece.model` (the official `google/umt5-xxl/`); when
    None, the weights' `spiece_model` tensor (a GGUF's `tokenizer.ggml` metadata), else a tokenizer folder that the
    published layouts put beside the weights (`google/umt5-xxl/`, `../tokenizer/`). `dtype`: None keeps the stored
    dtype (bf16 for fp8 files and quantized GGUF ones).
    """
    path = Path(os.fspath(path)).expanduser()
    files, config_path = _resolve_weights(path)
    resolved = _resolve_dtype(dtype)
    gguf = _open_gguf(files[0]) if is_gguf(files[0]) else None
    safetensors = gguf is None and not any(is_torch_file(f) for f in files)
    # The tokenizer is settled before the (large) weights are read, so that a missing one fails at once.
    tok: str | Path | UMT5Tokenizer | None = tokenizer
    if tok is None and gguf is not None and (spiece := spiece_model(gguf)) is not None:
        tok = tokenizer_from_spiece(spiece, source=f"{path} (tokenizer.ggml metadata)")
    if tok is None and not (safetensors and _carries_spiece(files)):
        tok = find_tokenizer_near(files[0].parent if config_path is not None else path)
        if tok is None:
            raise MissingFileError(
                f"No tokenizer for {path}: it carries no spiece_model and no google/umt5-xxl/ or tokenizer/ folder is "
                "beside it. Pass tokenizer=<folder holding tokenizer.json or spiece.model> (the official "
                "checkpoint's google/umt5-xxl/)."
            )
    tok_obj = tok if isinstance(tok, UMT5Tokenizer) or tok is None else load_tokenizer(tok)

    metadata: dict[str, str] = {}
    pages = None
    if gguf is not None:
        state_dict = dequantized(gguf, torch.device(device), resolved)
    elif safetensors:
        tensors, maps = read_mapped(files)
        pages = PageDropper(maps)
        state_dict = DroppingStateDict(tensors, pages)
        del tensors  # the only references are the state dict's, which the conversion consumes
        if len(files) == 1:
            metadata = read_safetensors_metadata(files[0])
    elif len(files) == 1:
        state_dict = read_torch_file(files[0])
    else:  # pragma: no cover - find_weight_files only returns safetensors
        raise InputError(f"Cannot read a mix of weight files: {', '.join(map(str, files))}.")
    identity = _file_identity(files)
    logger.info("Loading the UMT5 text encoder from %s", ", ".join(map(str, files)))
    encoder = text_encoder_from_state_dict(
        state_dict,
        tokenizer=tok_obj,
        device=device,
        dtype=resolved,
        metadata=metadata,
        config_path=config_path,
        identity=identity,
        source=str(path),
        consume=True,
        pages=pages,
    )
    logger.info("Loaded %r", encoder)
    return encoder
