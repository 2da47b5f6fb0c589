"""The UMT5 tokenizer, loaded locally: a `tokenizer.json`, a sentencepiece `spiece.model`, or the `spiece_model` bytes
that ComfyUI's umt5 files carry. Never from a hub.

The reference (`wan/modules/tokenizers.py`) calls a transformers fast tokenizer built from the checkpoint's
`google/umt5-xxl/tokenizer.json` with `padding='max_length', truncation=True, max_length=512,
add_special_tokens=True` on text cleaned by `clean_prompt`. A transformers fast tokenizer is a `tokenizers.Tokenizer`
with truncation and padding switched on, so this module drives the same `tokenizers.Tokenizer` the same way (and
is independent of the transformers version). A sentencepiece model is converted the way transformers converts a T5
sentencepiece model to `tokenizer.json` (Unigram, Metaspace, `$A </s>`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from ..errors import ConfigMismatchError, CorruptFileError, InputError, MissingFileError
from .cleaning import clean_prompt
from .demo import ASCII_ALPHABET, COMMON_CHINESE, DEMO_VOCAB_SIZE, TINY_UMT5_CONFIG, build_tiny_umt5, demo_sentences

__all__ = [
    "MAX_LENGTH",
    "TINY_UMT5_CONFIG",
    "UMT5Tokenizer",
    "build_demo_spiece_model",
    "build_demo_tokenizer",
    "build_tiny_umt5",
    "find_tokenizer_near",
    "load_tokenizer",
    "tokenizer_from_spiece",
]

MAX_LENGTH = 512
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
TOKENIZER_FILE = "tokenizer.json"
SPIECE_FILE = "spiece.model"
# Where a tokenizer folder sits relative to the weights: the official checkpoint's `google/umt5-xxl/`, the diffusers
# layout's `tokenizer/` beside `text_encoder/`.
_NEAR_FOLDERS = ("google/umt5-xxl", "umt5-xxl", "tokenizer")


class UMT5Tokenizer:
    """Cleans prompts and turns them into `[B, max_length]` ids and attention masks, as the reference does."""

    def __init__(
        self,
        backend: Tokenizer,
        *,
        max_length: int = MAX_LENGTH,
        source: str = "<memory>",
        pad_id: int | None = None,
    ) -> None:
        self.backend = backend
        self.max_length = int(max_length)
        self.source = source
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.eos_id = backend.token_to_id(EOS)
        self.unk_id = backend.token_to_id(UNK)
        if pad_id is None:
            pad_id = backend.token_to_id(PAD)
        if pad_id is None:
            raise ConfigMismatchError(
                f"The tokenizer from {source} has no '{PAD}' token; a UMT5 tokenizer pads with '{PAD}' (id 0)."
            )
        self.pad_id = int(pad_id)
        self._identity: str | None = None
        # What transformers sets on the backend for padding='max_length', truncation=True, max_length=512.
        backend.enable_truncation(self.max_length, stride=0, strategy="longest_first", direction="right")
        backend.enable_padding(
            direction="right",
            pad_id=self.pad_id,
            pad_type_id=0,
            pad_token=backend.id_to_token(self.pad_id),
            length=self.max_length,
        )

    def __repr__(self) -> str:
        return f"UMT5Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, max_length={self.max_length})"

    @property
    def identity(self) -> str:
        """A hash of the whole tokenizer (vocabulary, normalizer, ...): part of the encode cache's key."""
        if self._identity is None:
            self._identity = hashlib.sha256(self.backend.to_str().encode()).hexdigest()[:16]
        return self._identity

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(ids, mask)`, both int64 `[len(prompts), max_length]`: cleaned, `</s>` appended, truncated, padded."""
        if isinstance(prompts, str):
            prompts = [prompts]
        texts = [clean_prompt(p) for p in prompts]
        if not texts:
            raise InputError("No prompt to tokenize: pass a list of at least one string.")
        encodings = self.backend.encode_batch(texts, add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    def tokenize(self, prompt: str) -> list[int]:
        """The ids of one prompt without the padding (what the encoder's output is trimmed to)."""
        ids, mask = self([prompt])
        return ids[0, : int(mask[0].sum())].tolist()


# --------------------------------------------------------------------------------------------------- loading


def _from_tokenizer_json(path: Path) -> UMT5Tokenizer:
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a plain Exception for bad JSON
        raise CorruptFileError(
            f"{path} is not a valid tokenizer.json ({err}). Download the tokenizer folder again."
        ) from err
    return UMT5Tokenizer(backend, source=str(path))


def tokenizer_from_spiece(data: bytes | torch.Tensor, *, source: str = "spiece_model") -> UMT5Tokenizer:
    """A tokenizer from sentencepiece model bytes (a `spiece.model` file's content, or ComfyUI's uint8 tensor).

    The conversion is transformers' T5 one: the Unigram pieces with their scores, the model's precompiled
    normalization, Metaspace pre-tokenization and `</s>` appended; sentencepiece's byte fallback is not used (the
    converted `tokenizer.json` of the reference does not use it either).
    """
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    backend, pad_id = _backend_from_spiece(bytes(data), source)
    return UMT5Tokenizer(backend, source=source, pad_id=pad_id)


def _backend_from_spiece(data: bytes, source: str) -> tuple[Tokenizer, int | None]:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as err:  # protobuf's DecodeError
        raise CorruptFileError(f"{source} is not a sentencepiece model ({type(err).__name__}: {err}).") from err
    if len(proto.pieces) == 0:
        raise CorruptFileError(f"{source} is not a sentencepiece model (it holds no pieces).")
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        raise ConfigMismatchError(
            f"{source} is a sentencepiece model of type {proto.trainer_spec.model_type}, not Unigram: not a UMT5 "
            "tokenizer."
        )
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    backend = Tokenizer(Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    steps = [normalizers.Replace(Regex(" {2,}"), " ")]
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        steps.insert(0, normalizers.Precompiled(charsmap))
    backend.normalizer = normalizers.Sequence(steps)
    scheme = "always" if proto.normalizer_spec.add_dummy_prefix else "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    # Control pieces (<pad>, </s>) are special tokens, user-defined pieces are added tokens, as transformers does.
    control, user = (
        sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL,
        (sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED),
    )
    added = [
        AddedToken(p.piece, normalized=False, special=p.type == control)
        for p in proto.pieces
        if p.type in (control, user)
    ]
    backend.add_tokens(added)
    eos_id = proto.trainer_spec.eos_id
    if eos_id < 0 or eos_id >= len(proto.pieces):
        raise ConfigMismatchError(f"{source} has no end-of-sequence piece; a UMT5 tokenizer appends '{EOS}'.")
    eos = proto.pieces[eos_id].piece
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, eos_id)]
    )
    return backend, (proto.trainer_spec.pad_id if proto.trainer_spec.pad_id >= 0 else None)


def _tokenizer_in(folder: Path) -> Path | None:
    for name in (TOKENIZER_FILE, SPIECE_FILE):
        if (folder / name).is_file():
            return folder / name
    return None


def load_tokenizer(path: str | Path) -> UMT5Tokenizer:
    """A tokenizer from a folder holding `tokenizer.json` and/or `spiece.model` (`tokenizer.json` wins, as with
    transformers' AutoTokenizer), from one of those files, or from a checkpoint folder that holds such a folder
    (`google/umt5-xxl/`, `tokenizer/`)."""
    path = Path(path)
    if path.is_dir():
        found = _tokenizer_in(path) or next(
            (f for sub in _NEAR_FOLDERS if (f := _tokenizer_in(path / sub)) is not None), None
        )
        if found is None:
            listing = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "(empty)"
            raise MissingFileError(
                f"No tokenizer in {path} (it holds: {listing}). Point at the folder that holds {TOKENIZER_FILE} or "
                f"{SPIECE_FILE}: the official checkpoint's google/umt5-xxl/."
            )
        path = found
    if not path.is_file():
        raise MissingFileError(
            f"Tokenizer {path} does not exist. Point at the folder that holds {TOKENIZER_FILE} or {SPIECE_FILE} "
            "(the official checkpoint's google/umt5-xxl/)."
        )
    if path.suffix == ".json":
        return _from_tokenizer_json(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorruptFileError(f"{path} cannot be read ({err}).") from err
    return tokenizer_from_spiece(data, source=str(path))


def find_tokenizer_near(weights: str | Path) -> Path | None:
    """A tokenizer folder that the published layouts put beside the weights, or None.

    `models_t5_umt5-xxl-enc-bf16.pth` -> `google/umt5-xxl/` beside it; a transformers folder -> the folder itself or
    `../tokenizer/` (diffusers); a checkpoint root -> `google/umt5-xxl/` or `tokenizer/` inside it.
    """
    weights = Path(weights)
    base = weights if weights.is_dir() else weights.parent
    candidates = [base] if weights.is_dir() else []
    candidates += [base / sub for sub in _NEAR_FOLDERS] + [base.parent / "tokenizer"]
    for folder in candidates:
        if folder.is_dir() and _tokenizer_in(folder) is not None:
            return folder
    return None


# ------------------------------------------------------------------------------------------------------ demo


def _demo_backend() -> Tokenizer:
    """The demo `tokenizer.json`: the demo sentencepiece model converted like `google/umt5-xxl`'s, then padded with
    sentinels (`<extra_id_N>`, the last id being `<extra_id_0>` as in T5) to exactly `DEMO_VOCAB_SIZE` ids."""
    backend, _ = _backend_from_spiece(build_demo_spiece_model(), "demo spiece model")
    ids = {name: backend.token_to_id(name) for name in (PAD, EOS, UNK)}
    if ids != {PAD: 0, EOS: 1, UNK: 2}:  # pragma: no cover - fixed by the trainer's arguments
        raise RuntimeError(f"The demo tokenizer's special ids are {ids}, not pad 0, eos 1, unk 2.")
    fill = DEMO_VOCAB_SIZE - backend.get_vocab_size(with_added_tokens=True)
    if fill < 0:  # pragma: no cover - the trainer stays under its vocab_size
        raise RuntimeError(f"The demo tokenizer has more than {DEMO_VOCAB_SIZE} tokens.")
    backend.add_special_tokens([AddedToken(f"<extra_id_{i}>", normalized=False) for i in range(fill - 1, -1, -1)])
    return backend


def build_demo_tokenizer(folder: str | Path) -> Path:
    """Write a tiny UMT5-like tokenizer into `folder` and return `folder`.

    A Unigram model trained here on a few hundred built-in English and Chinese sentences (pad 0, eos 1, unk 2,
    every printable ASCII character and a few hundred common Chinese characters in the vocabulary), written as the
    official `google/umt5-xxl/` folder is: `spiece.model`, the `tokenizer.json` converted from it (with sentinels up
    to exactly `DEMO_VOCAB_SIZE` ids), `tokenizer_config.json` and `special_tokens_map.json`. The same bytes on
    every run.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPIECE_FILE).write_bytes(build_demo_spiece_model())
    _demo_backend().save(str(folder / TOKENIZER_FILE))
    special = {"pad_token": PAD, "eos_token": EOS, "unk_token": UNK}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": MAX_LENGTH,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return folder


@functools.lru_cache(maxsize=2)
def build_demo_spiece_model(vocab_size: int = DEMO_VOCAB_SIZE - 24) -> bytes:
    """The bytes of a tiny sentencepiece Unigram model (pad 0, eos 1, unk 2, no bos) trained here on the built-in
    sentences (the same bytes on every run): what ComfyUI's umt5 files carry as `spiece_model`, in miniature."""
    import io

    import sentencepiece

    stream = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(demo_sentences()),
        model_writer=stream,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        required_chars="".join(ASCII_ALPHABET + COMMON_CHINESE),
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return stream.getvalue()
