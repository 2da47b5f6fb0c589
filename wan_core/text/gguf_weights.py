"""UMT5 text encoders in GGUF files: city96's `umt5-xxl-encoder-{Q8_0,Q5_K_M,...}.gguf`, made with llama.cpp's
`convert_hf_to_gguf.py` and `llama-quantize` (the files ComfyUI-GGUF's "CLIPLoader (GGUF)" loads).

They are read with the DiT's `GGUFFile` and dequantized tensor by tensor on the load's device. llama.cpp keeps every
tensor in torch's layout (nothing transposed; ggml lists the dims in reverse, which `GGUFFile` undoes): the norms in
F32, the relative position biases in F16/F32 (llama-quantize never quantizes `attn_rel_b`), `token_embd` and the
matmul weights in F16/BF16/F32 or a block format. The names are llama.cpp's (`keymap.from_llama_cpp`). The converter
also stores the sentencepiece tokenizer as `tokenizer.ggml.*` metadata (pieces, scores, piece types, the normalizer's
precompiled charsmap and flags, the special ids): `spiece_model` rebuilds its model, as ComfyUI-GGUF does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import KeyMismatchError, describe_keys
from ..io.gguf_file import GGUFFile, GGUFTensor
from .keymap import LLAMA_CPP_EMBEDDING, is_llama_cpp, llama_cpp_keys


def open_gguf(path: Path) -> GGUFFile:
    """The GGUF file at `path`, once its names show a llama.cpp T5 encoder (a DiT or another model raises)."""
    file = GGUFFile(path)
    if not is_llama_cpp(file.tensors):
        hint = (
            " This is a Wan diffusion model (a DiT expert): pick it in the Model Loader (load_dit), not as the text "
            "encoder."
            if file.architecture == "wan"
            else ""
        )
        raise KeyMismatchError(
            f"{path} is not a T5 text encoder GGUF: its architecture is {file.architecture!r} and it holds "
            f"{describe_keys(list(file.tensors))}, not llama.cpp's T5 encoder tensors ('{LLAMA_CPP_EMBEDDING}', "
            f"'enc.blk.N.*') as umt5-xxl-encoder-*.gguf does.{hint}"
        )
    return file


def meta_tensors(file: GGUFFile) -> dict[str, torch.Tensor]:
    """The file's tensors as meta tensors of their shapes (nothing read), under the file's names."""
    return {name: torch.empty(tensor.shape, device="meta") for name, tensor in file.tensors.items()}


def check_complete(file: GGUFFile, num_layers: int) -> None:
    """Raise `KeyMismatchError` naming the tensors that a `num_layers`-block encoder needs and the file lacks."""
    missing = [name for name in llama_cpp_keys(num_layers) if name not in file.tensors]
    if missing:
        raise KeyMismatchError(
            f"{file.path} lacks {len(missing)} tensor(s) of a {num_layers}-block T5 encoder: "
            f"{describe_keys(missing)}. The file is incomplete: download it again."
        )


def _target_dtype(tensor: GGUFTensor, dtype: torch.dtype | None) -> torch.dtype:
    # Quantized blocks default to bf16, the reference's dtype, as fp8 files do.
    return dtype or (torch.bfloat16 if tensor.quantized else tensor.stored_dtype)


def dequantized(file: GGUFFile, device: torch.device, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Every tensor of the file on `device`, in `dtype`; with None, float tensors keep their stored dtype and
    quantized ones become bf16."""
    return {name: file.dequantized(name, device, _target_dtype(tensor, dtype)) for name, tensor in file.tensors.items()}


# sentencepiece's TrainerSpec field -> (llama.cpp's metadata key, the UMT5 piece it names where the key is absent)
_SPECIAL_IDS = {"unk_id": ("unknown_token_id", "<unk>"), "eos_id": ("eos_token_id", "</s>"),
                "pad_id": ("padding_token_id", "<pad>"), "bos_id": ("bos_token_id", None)}


def spiece_model(file: GGUFFile) -> bytes | None:
    """The bytes of the sentencepiece model the file's `tokenizer.ggml.*` metadata describes (llama.cpp keeps the
    piece types in sentencepiece's numbering), or None when the file carries no T5 tokenizer."""
    tokens = file.field("tokenizer.ggml.tokens")
    if file.field("tokenizer.ggml.model") != "t5" or not tokens:
        return None
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
    for piece, score, kind in zip(tokens, file.field("tokenizer.ggml.scores"), file.field("tokenizer.ggml.token_type"),
                                  strict=True):
        proto.pieces.add(piece=piece, score=score, type=kind)
    index = {piece: i for i, piece in enumerate(tokens[:1000])}  # the special pieces come first
    for attr, (key, piece) in _SPECIAL_IDS.items():
        found = file.field(f"tokenizer.ggml.{key}")
        setattr(proto.trainer_spec, attr, found if found is not None else index.get(piece, -1))
    normalizer = proto.normalizer_spec
    for attr, key in (("add_dummy_prefix", "add_space_prefix"), ("remove_extra_whitespaces",) * 2):
        flag = file.field(f"tokenizer.ggml.{key}")
        setattr(normalizer, attr, True if flag is None else flag)
    normalizer.precompiled_charsmap = bytes(file.field("tokenizer.ggml.precompiled_charsmap") or [])
    return proto.SerializeToString()
