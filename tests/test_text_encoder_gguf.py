"""UMT5 text encoder GGUF files (city96's umt5-xxl-encoder-*.gguf): written here with the `gguf` package from a tiny
reference encoder, under the names llama.cpp's converter gives (the package's own `TensorNameMap`), loaded with
`load_text_encoder`; and the errors for incomplete, misnamed and wrong files."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import sentencepiece
import torch
from test_gguf import _synthesized

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import ConfigMismatchError, CorruptFileError, KeyMismatchError, MissingFileError
from wan_core.io.gguf_dequant import dequantize
from wan_core.io.gguf_file import ORIG_SHAPE_KEY, GGUFFile
from wan_core.text import keymap
from wan_core.text.demo import TINY_UMT5_CONFIG, build_tiny_umt5
from wan_core.text.encoder import load_text_encoder
from wan_core.text.tokenizer import build_demo_spiece_model, build_demo_tokenizer, tokenizer_from_spiece

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

PROMPTS = ["Two anthropomorphic cats in comfy boxing gear fight on a stage.", "两只猫在舞台上打拳击。", ""]
# A k-quant block holds 256 values: the matrices' last dims must be multiples of it, as in the real model.
WIDE_CONFIG = {**TINY_UMT5_CONFIG, "d_model": 256, "d_kv": 64, "d_ff": 512}

Types = Callable[[str, np.ndarray], str]


def q8_0_file(name: str, value: np.ndarray) -> str:
    """What llama-quantize makes of an F16 conversion for a Q8_0 file: 1-D norms stay F32, the relative position
    biases F16 (never quantized), every other matrix (token_embd included) Q8_0."""
    if value.ndim == 1:
        return "F32"
    return "F16" if name.endswith("attn_rel_b.weight") else "Q8_0"


def f16_file(name: str, value: np.ndarray) -> str:
    return "F32" if value.ndim == 1 else "F16"


def q5_k_m_file(name: str, value: np.ndarray) -> str:
    """A Q5_K_M-like mix: Q6_K for attn_v and ffn_down, Q5_K and Q4_K for the other matrices."""
    if value.ndim == 1:
        return "F32"
    if name.endswith("attn_rel_b.weight"):
        return "F16"
    if name.endswith(("attn_v.weight", "ffn_down.weight")):
        return "Q6_K"
    return "Q4_K" if name.endswith("attn_k.weight") else "Q5_K"


def write_gguf(path, model: torch.nn.Module, types: Types, *, skip: tuple[str, ...] = (),
               extra: dict[str, np.ndarray] | None = None, spiece: bytes | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`model` as llama.cpp's converter and llama-quantize write it (arch t5encoder, one token embedding, each
    tensor stored as `types` says; k-quants as random blocks, which the gguf package cannot make). Returns the float32
    weights the file holds (dequantized by the gguf package) and each tensor's type, under transformers' names."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, model.config.num_layers)
    writer = gguf.GGUFWriter(str(path), arch="t5encoder")
    held, stored = {}, {}
    rng = np.random.default_rng(0)
    for key, value in model.state_dict().items():
        name = names.get_name(key, try_suffixes=(".weight",))
        if key == keymap.EMBED_TOKENS or name in skip:
            continue
        data = value.float().numpy()
        kind = types(name, data)
        if kind in ("F32", "F16"):
            data = data.astype(np.float16 if kind == "F16" else np.float32)
            writer.add_tensor(name, data)
            held[key] = torch.from_numpy(data.astype(np.float32))
        else:
            raw = gguf.quants.quantize(data, Q[kind]) if kind == "Q8_0" else _synthesized(kind, data.shape, rng)
            writer.add_tensor(name, raw, raw_dtype=Q[kind])
            held[key] = torch.from_numpy(gguf.quants.dequantize(raw, Q[kind]).copy())
        stored[key] = kind
    for name, data in (extra or {}).items():
        writer.add_tensor(name, data)
    if spiece is not None:
        write_tokenizer(writer, spiece, model.config.vocab_size)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held, stored


def write_tokenizer(writer, spiece: bytes, rows: int) -> None:
    """The sentencepiece model as llama.cpp's T5 converter stores it (`_set_vocab_sentencepiece`): every piece with its
    score and type, `[PAD{i}]` pieces of type UNUSED up to the embedding's rows, the normalizer's flags and charsmap,
    the special ids from the tokenizer's config."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spiece)
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    pieces += [(f"[PAD{i}]", -1000.0, gguf.TokenType.UNUSED) for i in range(len(pieces), rows)]
    writer.add_tokenizer_model("t5")
    writer.add_token_list([p for p, _, _ in pieces])
    writer.add_token_scores([s for _, s, _ in pieces])
    writer.add_token_types([int(t) for _, _, t in pieces])
    writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    writer.add_remove_extra_whitespaces(proto.normalizer_spec.remove_extra_whitespaces)
    writer.add_precompiled_charsmap(proto.normalizer_spec.precompiled_charsmap)
    writer.add_eos_token_id(proto.trainer_spec.eos_id)
    writer.add_unk_token_id(proto.trainer_spec.unk_id)
    writer.add_pad_token_id(proto.trainer_spec.pad_id)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_demo_tokenizer(tmp_path_factory.mktemp("tokenizer") / "google" / "umt5-xxl")


def reference_outputs(config: dict, weights: dict[str, torch.Tensor], enc) -> list[torch.Tensor]:
    """transformers' UMT5EncoderModel with `weights` run on the prompts as `enc` tokenizes them, trimmed."""
    from transformers import UMT5Config, UMT5EncoderModel

    model = UMT5EncoderModel(UMT5Config(**config)).eval()
    model.load_state_dict({**weights, keymap.EMBED_TOKENS: weights[keymap.SHARED]}, strict=True)
    ids, mask = enc.tokenizer(PROMPTS)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return [h[:n] for h, n in zip(hidden, mask.sum(dim=1).tolist(), strict=True)]


def q8_0_step(weight: torch.Tensor) -> torch.Tensor:
    """One Q8_0 step per value: its block of 32's largest magnitude / 127 (rounding costs half a step, the fp16
    scale far less)."""
    step = weight.abs().reshape(-1, 32).amax(dim=1, keepdim=True) / 127
    return step.expand(-1, 32).reshape(weight.shape)


# ------------------------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize(("types", "default_dtype"), [(q8_0_file, torch.bfloat16), (f16_file, torch.float16)],
                         ids=["Q8_0", "F16"])
def test_gguf_gives_the_reference_encoder(tmp_path, tok_dir, types, default_dtype):
    original = build_tiny_umt5()
    path = tmp_path / "umt5-xxl-encoder-test.gguf"
    held, stored = write_gguf(path, original, types)
    assert {"F32", "F16"} <= set(stored.values())

    enc = load_text_encoder(path, tokenizer=tok_dir, dtype="fp32")
    loaded = enc.model.state_dict()
    for key, kind in stored.items():
        assert torch.equal(loaded[key], held[key]), key  # dequantized as the gguf package does, bit for bit
        want = original.state_dict()[key]
        if kind == "F32":
            assert torch.equal(loaded[key], want), key
        elif kind == "F16":
            assert torch.equal(loaded[key], want.half().float()), key
        else:
            assert ((loaded[key] - want).abs() <= q8_0_step(want)).all(), key
    assert enc.model.encoder.embed_tokens.weight is enc.model.shared.weight  # the one token_embd, tied

    out = enc.encode(PROMPTS)
    for got, want in zip(out, reference_outputs(TINY_UMT5_CONFIG, held, enc), strict=True):
        assert torch.equal(got, want)
    exact = reference_outputs(TINY_UMT5_CONFIG, original.state_dict(), enc)
    for got, want in zip(out, exact, strict=True):
        err = (got - want).abs().max() / want.abs().max()
        assert err < 0.02, f"relative error {err:.3g} against the unquantized encoder"

    assert load_text_encoder(path, tokenizer=tok_dir).dtype == default_dtype  # the stored dtype; bf16 when quantized


def test_k_quant_gguf_found_by_suffix_with_the_tokenizer_beside_it(tmp_path, tok_dir):
    """A Q5_K_M-like file named `.GGUF`, its tokenizer in `umt5-xxl/` beside it (as in ComfyUI's text_encoders/)."""
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        original = UMT5EncoderModel(UMT5Config(**WIDE_CONFIG)).eval()
    path = tmp_path / "umt5-xxl-encoder-Q5_K_M.GGUF"
    held, stored = write_gguf(path, original, q5_k_m_file)
    assert {"Q4_K", "Q5_K", "Q6_K"} < set(stored.values())
    (tmp_path / "umt5-xxl").symlink_to(tok_dir, target_is_directory=True)

    enc = load_text_encoder(path)
    assert enc.dtype == torch.bfloat16 and enc.d_model == 256
    enc32 = load_text_encoder(path, dtype=torch.float32)
    loaded = enc32.model.state_dict()
    assert all(torch.equal(loaded[key], held[key]) for key in stored)
    for got, want in zip(enc32.encode(PROMPTS), reference_outputs(WIDE_CONFIG, held, enc32), strict=True):
        assert torch.equal(got, want)


def test_the_tokenizer_the_file_carries_is_used(tmp_path):
    """No tokenizer folder anywhere: the one rebuilt from the file's metadata tokenizes as its sentencepiece model."""
    spiece = build_demo_spiece_model()
    path = tmp_path / "umt5-xxl-encoder-Q8_0.gguf"
    write_gguf(path, build_tiny_umt5(), q8_0_file, spiece=spiece)
    enc = load_text_encoder(path)
    assert "tokenizer.ggml" in enc.tokenizer.source
    texts = [*PROMPTS, "  spaced   out  ", "ﬁne ½ café", "<unk> </s>"]  # ﬁ, ½: the charsmap folds them
    ids, mask = enc.tokenizer(texts)
    want_ids, want_mask = tokenizer_from_spiece(spiece)(texts)
    assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)
    assert ids[0, mask[0].sum() - 1] == 1  # `</s>` closes each prompt
    model = sentencepiece.SentencePieceProcessor(model_proto=spiece)
    assert ids[0, : mask[0].sum() - 1].tolist() == model.encode(PROMPTS[0])


def test_a_lone_gguf_in_text_encoders_loads_through_the_nodes(tmp_path, monkeypatch):
    """ComfyUI's text_encoders/ holding only city96's file (no tokenizer folder): listed, loaded, encoded."""
    from nodes import handles, host
    from nodes.loaders import Wan22T5Loader
    from nodes.text_encode import Wan22T5Encode

    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tmp_path / "models"))
    folder = tmp_path / "models" / "text_encoders"
    folder.mkdir(parents=True)
    name = "umt5-xxl-encoder-Q8_0.gguf"
    held, _ = write_gguf(folder / name, build_tiny_umt5(), q8_0_file, spiece=build_demo_spiece_model())
    assert name in Wan22T5Loader.INPUT_TYPES()["required"]["t5_name"][0]
    (handle,) = Wan22T5Loader().load(name, "fp32")
    handle = handle.bind("cpu")  # as Set Device "cpu" does: the reference runs on the CPU
    handles.MODEL_CACHE.clear()
    try:
        cond, _, _ = Wan22T5Encode().encode(handle, PROMPTS[0], PROMPTS[1])
        enc = handle.load()
    finally:
        handles.MODEL_CACHE.clear()
    want = reference_outputs(TINY_UMT5_CONFIG, held, enc)
    assert torch.equal(cond.positive[0], want[0]) and torch.equal(cond.negative[0], want[1])


def test_a_large_quantized_tensor_dequantizes_in_slices_of_rows(tmp_path, monkeypatch):
    from wan_core.io import gguf_file

    path = tmp_path / "umt5-xxl-encoder-Q8_0.gguf"
    write_gguf(path, build_tiny_umt5(), q8_0_file)
    file = GGUFFile(path)
    embedding = file.tensors["token_embd.weight"]
    assert embedding.qtype == Q.Q8_0 and embedding.shape[0] % 3
    whole = file.dequantized("token_embd.weight", torch.device("cpu"), torch.float32)
    slices = []
    monkeypatch.setattr(gguf_file, "_CHUNK_VALUES", 3 * embedding.shape[1] + 5)  # 3 rows a slice, the last shorter
    monkeypatch.setattr(gguf_file, "dequantize", lambda raw, *args: slices.append(len(raw)) or dequantize(raw, *args))
    sliced = file.dequantized("token_embd.weight", torch.device("cpu"), torch.float32)
    assert torch.equal(sliced, whole)
    assert slices == [3] * (embedding.shape[0] // 3) + [embedding.shape[0] % 3]


# ------------------------------------------------------------------------------------------------------- errors


def test_missing_and_misnamed_tensors_are_named_before_dequantizing(tmp_path, tok_dir, monkeypatch):
    monkeypatch.setattr(GGUFFile, "dequantized", lambda *a, **k: pytest.fail("a tensor was dequantized"))
    model = build_tiny_umt5()
    missing = tmp_path / "missing.gguf"
    write_gguf(missing, model, q8_0_file, skip=("enc.blk.1.ffn_up.weight",))
    with pytest.raises(KeyMismatchError, match=r"lacks 1 tensor.*'enc\.blk\.1\.ffn_up\.weight'.*download it again"):
        load_text_encoder(missing, tokenizer=tok_dir)
    misnamed = tmp_path / "misnamed.gguf"
    write_gguf(misnamed, model, q8_0_file, extra={"enc.blk.0.attn_qkv.weight": np.zeros((4, 32), np.float32)})
    with pytest.raises(KeyMismatchError, match=r"not tensors of a llama\.cpp T5 encoder: 'enc\.blk\.0\.attn_qkv"):
        load_text_encoder(misnamed, tokenizer=tok_dir)


def test_a_dit_gguf_is_told_apart(tmp_path):
    """A Wan DiT GGUF (city96's layout) picked as the text encoder: told so even with no tokenizer around."""
    dit = init_random_(WanDiT(DIT_CONFIGS["tiny-t2v"]), torch.Generator().manual_seed(0))
    path = tmp_path / "wan2.2_t2v_high_noise_14B_Q8_0.gguf"
    writer = gguf.GGUFWriter(str(path), arch="wan")
    for key, value in dit.state_dict().items():
        data = value.float().numpy()
        if data.ndim == 5:
            writer.add_array(ORIG_SHAPE_KEY + key, list(data.shape))
            data = data.reshape(data.shape[0], -1)
        writer.add_tensor(key, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(KeyMismatchError, match=r"not a T5 text encoder GGUF: its architecture is 'wan'.*Model Loader"):
        load_text_encoder(path)


def test_wrong_models_and_broken_files(tmp_path, tok_dir):
    t5_v1_1 = tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf"  # the Flux one: a relative position bias in block 0 only
    write_gguf(t5_v1_1, build_tiny_umt5(), q8_0_file, skip=("enc.blk.1.attn_rel_b.weight",))
    with pytest.raises(ConfigMismatchError, match="not UMT5"):
        load_text_encoder(t5_v1_1, tokenizer=tok_dir)
    small_vocab = tmp_path / "small_vocab.gguf"
    write_gguf(small_vocab, build_tiny_umt5(vocab_size=512), q8_0_file)
    with pytest.raises(ConfigMismatchError, match="1024 tokens"):
        load_text_encoder(small_vocab, tokenizer=tok_dir)
    with pytest.raises(MissingFileError, match="tokenizer="):
        load_text_encoder(small_vocab)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(small_vocab.read_bytes()[:3000])
    with pytest.raises(CorruptFileError, match="download it again"):
        load_text_encoder(truncated, tokenizer=tok_dir)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("types", [q8_0_file, q5_k_m_file], ids=["Q8_0", "Q5_K_M"])
def test_gguf_dequantized_on_the_gpu_equals_the_cpu_load(tmp_path, tok_dir, types):
    from transformers import UMT5Config, UMT5EncoderModel

    path = tmp_path / "umt5-xxl-encoder.gguf"
    write_gguf(path, UMT5EncoderModel(UMT5Config(**WIDE_CONFIG)).eval(), types)
    cpu, gpu = load_text_encoder(path, tokenizer=tok_dir), load_text_encoder(path, tokenizer=tok_dir, device="cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype == torch.bfloat16
    want = cpu.model.state_dict()
    for name, tensor in gpu.model.state_dict().items():
        assert tensor.device.type == "cuda" and torch.equal(tensor.cpu(), want[name]), name
    for got, ref in zip(gpu.encode(PROMPTS), cpu.encode(PROMPTS), strict=True):
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu().float(), ref.float(), rtol=0.05, atol=0.05)
