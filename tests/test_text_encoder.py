"""UMT5 text encoder: every file layout, the reference's semantics, the encode cache and the errors.

Everything is made here: a tiny random UMT5EncoderModel (transformers config) and a tiny tokenizer trained at test
time; nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import sentencepiece
import torch
from safetensors.torch import save_file
from text_reference import official_encoder_forward, reference_encode, reference_tokenize

import wan_core
from wan_core.errors import (
    ConfigMismatchError,
    CorruptFileError,
    InputError,
    KeyMismatchError,
    MissingFileError,
)
from wan_core.io.quant import dequantize, quantize_fp8_scaled
from wan_core.text import keymap
from wan_core.text.cleaning import clean_prompt
from wan_core.text.demo import DEMO_VOCAB_SIZE, TINY_UMT5_CONFIG, build_tiny_umt5
from wan_core.text.encoder import (
    OFFICIAL_FILENAME,
    TextEncoder,
    _EncodeCache,
    infer_config,
    load_text_encoder,
    text_encoder_from_state_dict,
)
from wan_core.text.tokenizer import (
    build_demo_spiece_model,
    build_demo_tokenizer,
    load_tokenizer,
    tokenizer_from_spiece,
)

EN = "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage."
ZH = "两只拟人化的猫咪穿着舒适的拳击装备，戴着鲜艳的手套，在聚光灯下的舞台上激烈对战。"
MIXED = "  A white cat 一只猫  wearing sunglasses &amp;amp; a hat\n\t on the beach. "
LONG = "a cat runs across a sunny park " * 120  # far more than 512 tokens
PROMPTS = [EN, ZH, MIXED, ""]


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_umt5()


@pytest.fixture(scope="module")
def official_sd(tiny):
    return {k: v.clone() for k, v in keymap.to_official(tiny.state_dict()).items()}


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory, official_sd):
    """The official layout: models_t5_umt5-xxl-enc-bf16.pth (here fp32) beside google/umt5-xxl/."""
    root = tmp_path_factory.mktemp("Wan2.2-T2V-A14B")
    build_demo_tokenizer(root / "google" / "umt5-xxl")
    torch.save(official_sd, root / OFFICIAL_FILENAME)
    return root


@pytest.fixture(scope="module")
def tok_dir(official_ckpt):
    return official_ckpt / "google" / "umt5-xxl"


@pytest.fixture(scope="module")
def spiece_bytes():
    return build_demo_spiece_model()


def _comfy_sd(model: torch.nn.Module, spiece: bytes, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """What ComfyUI's umt5_xxl_fp16.safetensors holds: transformers names, the embedding once, spiece_model."""
    sd = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items() if k != keymap.EMBED_TOKENS}
    sd["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    return sd


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    err = (a.float() - b.float()).abs().max().item() / max(b.float().abs().max().item(), 1e-12)
    assert err < tol, f"relative error {err:.3g} >= {tol}"


# ------------------------------------------------------------------------------------------- cleaning, tokenizer


def test_clean_prompt_as_the_reference():
    assert clean_prompt("  a \n\t b  ") == "a b"
    assert clean_prompt("fish &amp;amp; chips") == "fish & chips"  # unescaped twice
    assert clean_prompt("schÃ¶n") == "schön"  # ftfy repairs mojibake
    assert clean_prompt("一只猫　跑") == "一只猫 跑"  # ideographic space is whitespace
    with pytest.raises(InputError):
        clean_prompt(None)  # type: ignore[arg-type]


def test_demo_tokenizer_is_umt5_like_and_deterministic(tmp_path, tok_dir):
    tok = load_tokenizer(tok_dir)
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert tok.vocab_size == DEMO_VOCAB_SIZE == TINY_UMT5_CONFIG["vocab_size"]
    for prompt in (EN, ZH, MIXED):
        ids = tok.tokenize(prompt)
        assert ids[-1] == tok.eos_id and tok.unk_id not in ids, (prompt, ids)
        assert len(ids) > 3
    assert tok.tokenize("") == [tok.eos_id]
    again = build_demo_tokenizer(tmp_path / "again")
    for name in ("tokenizer.json", "spiece.model"):
        assert (again / name).read_bytes() == (tok_dir / name).read_bytes()


def test_tokenizer_matches_the_reference_transformers_call(tok_dir):
    prompts = [EN, ZH, MIXED, "", LONG]
    expected = reference_tokenize(tok_dir, prompts)
    ids, mask = load_tokenizer(tok_dir)(prompts)
    assert ids.shape == mask.shape == (len(prompts), 512)
    assert torch.equal(ids, expected.input_ids) and torch.equal(mask, expected.attention_mask)
    assert mask[-1].sum() == 512 and ids[-1, -1] == 1  # truncated, </s> kept last
    assert (ids[3, 1:] == 0).all() and ids[3, 0] == 1  # the empty prompt is just </s>, then <pad>


def test_spiece_model_converts_like_sentencepiece(spiece_bytes, tmp_path):
    """The `spiece_model` path: converted to a tokenizers Unigram; gives sentencepiece's ids plus </s>."""
    tok = tokenizer_from_spiece(torch.frombuffer(bytearray(spiece_bytes), dtype=torch.uint8))
    processor = sentencepiece.SentencePieceProcessor(model_proto=spiece_bytes)
    for prompt in (EN, ZH, MIXED, "Hello, World! 0123", "ｆｕｌｌ－ｗｉｄｔｈ　ＡＢＣ"):
        expected = processor.encode(clean_prompt(prompt)) + [processor.eos_id()]
        assert tok.tokenize(prompt) == expected, prompt
    for prompt in (EN, ZH):
        assert tok.unk_id not in tok.tokenize(prompt)
    # A folder with only spiece.model (no tokenizer.json) loads the same way.
    (tmp_path / "spiece.model").write_bytes(spiece_bytes)
    assert load_tokenizer(tmp_path).tokenize(ZH) == tok.tokenize(ZH)


# ------------------------------------------------------------------------------------------------------- key map


def test_keymap_round_trip_and_names(tiny):
    sd = tiny.state_dict()
    official = keymap.to_official(sd)
    assert sorted(official) == sorted(keymap.official_keys(2))
    back = keymap.from_official(official)
    assert sorted(back) == sorted(k for k in sd if k != keymap.EMBED_TOKENS)
    assert all(back[k] is sd[k] for k in back)
    assert keymap.to_transformers(official).keys() == back.keys()
    # The FFN branches: official gate.0 (GELU) is wi_0, fc1 (linear) is wi_1.
    assert official["blocks.1.ffn.gate.0.weight"] is sd["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"]
    assert official["blocks.1.ffn.fc1.weight"] is sd["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
    saved_by_comfy = {f"umt5xxl.transformer.{k}": v for k, v in sd.items()}  # a CLIP saved from ComfyUI
    assert keymap.to_transformers(saved_by_comfy).keys() == sd.keys()
    with pytest.raises(KeyMismatchError, match="blocks.0.attn.qkv.weight"):
        keymap.from_official({**official, "blocks.0.attn.qkv.weight": torch.zeros(1)})
    with pytest.raises(KeyMismatchError, match="spiece_model"):
        keymap.to_official({**sd, "spiece_model": torch.zeros(1, dtype=torch.uint8)})
    with pytest.raises(KeyMismatchError, match="not a UMT5"):
        keymap.to_transformers({"model.layers.0.weight": torch.zeros(1)})


def test_real_umt5_xxl_names_and_config_from_shapes():
    """The real architecture, on the meta device (no memory): names both ways and the config read from shapes."""
    from transformers import UMT5Config, UMT5EncoderModel

    real = dict(vocab_size=256384, d_model=4096, num_layers=24, num_heads=64, d_kv=64, d_ff=10240)
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**real, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32))
    official = keymap.to_official(model.state_dict())
    assert len(official) == 2 + 24 * 10 and sorted(official) == sorted(keymap.official_keys(24))
    assert official["blocks.23.pos_embedding.embedding.weight"].shape == (32, 64)
    config = infer_config(keymap.from_official(official))
    assert {k: config[k] for k in real} == real
    assert config["relative_attention_num_buckets"] == 32 and config["feed_forward_proj"] == "gated-gelu"


# --------------------------------------------------------------------------------------------------- file layouts


def test_official_pth_gives_the_reference_outputs(official_ckpt, official_sd, tok_dir, tiny):
    """The official .pth, mapped to transformers' UMT5, reproduces the official encoder's math and the transformers
    model it came from (round trip: identical)."""
    enc = load_text_encoder(official_ckpt / OFFICIAL_FILENAME)  # tokenizer found in google/umt5-xxl/
    assert enc.dtype == torch.float32 and enc.device.type == "cpu"
    out = enc.encode(PROMPTS)
    expected = reference_encode(official_sd, tok_dir, PROMPTS)
    for got, want in zip(out, expected, strict=True):
        assert got.shape == want.shape and got.shape[1] == TINY_UMT5_CONFIG["d_model"]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ids, mask = enc.tokenizer(PROMPTS)
    with torch.no_grad():
        direct = tiny(input_ids=ids, attention_mask=mask).last_hidden_state
    for i, got in enumerate(out):
        assert torch.equal(got, direct[i, : got.shape[0]])
    # The checkpoint folder itself, with the tokenizer passed explicitly, is the same model.
    again = load_text_encoder(official_ckpt, tokenizer=tok_dir)
    assert torch.equal(again.encode([EN])[0], out[0])


def test_official_bf16_pth_keeps_bf16(tmp_path, official_sd, tok_dir, official_ckpt):
    path = tmp_path / OFFICIAL_FILENAME
    torch.save({k: v.to(torch.bfloat16) for k, v in official_sd.items()}, path)
    enc = load_text_encoder(path, tokenizer=tok_dir)
    assert enc.dtype == torch.bfloat16
    (got,) = enc.encode([EN])
    assert got.dtype == torch.bfloat16
    want = load_text_encoder(official_ckpt).encode([EN])[0]
    _close(got, want, 0.05)
    fp16 = load_text_encoder(path, tokenizer=tok_dir, dtype="fp16")
    assert fp16.dtype == torch.float16
    _close(fp16.encode([EN])[0], want, 0.05)


def test_transformers_and_diffusers_folders(tmp_path, tiny, tok_dir, official_ckpt):
    """A transformers folder (config.json + safetensors, also sharded), diffusers' text_encoder/ + tokenizer/,
    and a folder without config.json (architecture read from the shapes)."""
    want = load_text_encoder(official_ckpt).encode([EN, ZH])
    root = tmp_path / "Wan2.2-T2V-A14B-Diffusers"
    tiny.save_pretrained(root / "text_encoder", max_shard_size="200KB")
    assert len(list((root / "text_encoder").glob("model-*.safetensors"))) > 1
    build_demo_tokenizer(root / "tokenizer")
    for path in (root / "text_encoder", root):
        got = load_text_encoder(path).encode([EN, ZH])
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    bare = tmp_path / "bare"
    bare.mkdir()
    plain = {k: v.contiguous() for k, v in tiny.state_dict().items() if k != keymap.EMBED_TOKENS}
    save_file(plain, bare / "model.safetensors")
    enc = load_text_encoder(bare, tokenizer=tok_dir)
    assert {k: getattr(enc.model.config, k) for k in TINY_UMT5_CONFIG if k != "dropout_rate"} == {
        k: v for k, v in TINY_UMT5_CONFIG.items() if k != "dropout_rate"
    }
    assert torch.equal(enc.encode([EN])[0], want[0])


def test_comfy_fp16_file_with_embedded_tokenizer(tmp_path, tiny, spiece_bytes):
    path = tmp_path / "umt5_xxl_fp16.safetensors"
    save_file(_comfy_sd(tiny, spiece_bytes), path)
    enc = load_text_encoder(path)  # tokenizer=None: from the spiece_model tensor
    assert enc.dtype == torch.float16
    processor = sentencepiece.SentencePieceProcessor(model_proto=spiece_bytes)
    assert enc.tokenizer.tokenize(EN) == processor.encode(clean_prompt(EN)) + [1]
    out = enc.encode([EN, ZH])
    ids, mask = enc.tokenizer([EN, ZH])
    with torch.no_grad():
        want = tiny(input_ids=ids, attention_mask=mask).last_hidden_state
    for i, got in enumerate(out):
        assert got.dtype == torch.float16 and got.shape[0] == int(mask[i].sum())
        _close(got, want[i, : got.shape[0]], 0.02)
    fp32 = load_text_encoder(path, dtype=torch.float32)
    assert fp32.dtype == torch.float32
    _close(fp32.encode([EN])[0], want[0, : out[0].shape[0]], 0.01)


@pytest.mark.parametrize("new_format", [False, True], ids=["scaled_fp8", "comfy_quant"])
def test_comfy_fp8_scaled_file(tmp_path, tiny, spiece_bytes, new_format):
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items() if k != keymap.EMBED_TOKENS}
    quantized = quantize_fp8_scaled(sd, new_format=new_format)
    assert quantized["encoder.block.0.layer.0.SelfAttention.q.weight"].dtype == torch.float8_e4m3fn
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file({**quantized, "spiece_model": torch.frombuffer(bytearray(spiece_bytes), dtype=torch.uint8)}, path)
    enc = load_text_encoder(path, dtype="fp32")
    # The same weights dequantized by hand give the same outputs: the file was dequantized and mapped right.
    reference = text_encoder_from_state_dict(
        dequantize(dict(quantized), torch.float32), tokenizer=enc.tokenizer, dtype=torch.float32
    )
    for got, want in zip(enc.encode([EN, ZH]), reference.encode([EN, ZH]), strict=True):
        assert torch.equal(got, want)
    assert load_text_encoder(path).dtype == torch.bfloat16  # fp8 files default to bf16, the reference's dtype


def alive_at_each_conversion(monkeypatch, weights: list) -> list[int]:  # noqa: ANN001
    """A list that gets, at each fp8 weight's conversion (`quant._dequantize_one`), how many of the weakly
    referenced `weights` are still alive (`weights` may be filled later, while the load reads the file)."""
    from wan_core.io import quant

    alive: list[int] = []
    convert = quant._dequantize_one

    def counting(weight, *args):  # noqa: ANN001, ANN002, ANN202
        alive.append(sum(ref() is not None for ref in weights))
        return convert(weight, *args)

    monkeypatch.setattr(quant, "_dequantize_one", counting)
    return alive


def test_a_load_frees_each_fp8_weight_once_converted(tiny, monkeypatch):
    """The fp8 file's weights and their bf16 conversions are never all in RAM at once (an fp8 umt5-xxl: 6.7 + 11.4
    GB): each fp8 weight is gone before the next is converted (`load_text_encoder` converts with consume=True)."""
    import weakref

    sd = {k: v.contiguous() for k, v in tiny.state_dict().items() if k != keymap.EMBED_TOKENS}
    quantized = quantize_fp8_scaled(sd)
    fp8 = [weakref.ref(v) for v in quantized.values() if v.dtype == torch.float8_e4m3fn]
    alive_at_each = alive_at_each_conversion(monkeypatch, fp8)
    reference = dequantize(dict(quantized), torch.bfloat16)
    alive_at_each.clear()
    out = dequantize(quantized, torch.bfloat16, consume=True)
    assert len(alive_at_each) > 10
    assert alive_at_each == [len(fp8) - i for i in range(len(alive_at_each))]  # one fewer alive at each conversion
    assert all(torch.equal(out[k], reference[k]) for k in reference) and out.keys() == reference.keys()


def test_weights_are_assigned_not_copied(tiny, tok_dir):
    """Built on the meta device and loaded with assign: the model's parameters are the given tensors."""
    sd = {k: v.clone() for k, v in tiny.state_dict().items() if k != keymap.EMBED_TOKENS}
    enc = text_encoder_from_state_dict(sd, tokenizer=tok_dir)
    params = dict(enc.model.named_parameters(remove_duplicate=False))
    assert all(params[k].data_ptr() == v.data_ptr() for k, v in sd.items())
    assert enc.model.encoder.embed_tokens.weight is enc.model.shared.weight  # tied: one tensor
    assert not any(p.is_meta or p.requires_grad for p in params.values())


# ------------------------------------------------------------------------------------------ trimming and padding


def test_trimming_and_padding_follow_the_reference(official_ckpt):
    enc = load_text_encoder(official_ckpt)
    prompts = [EN, ZH, "", LONG]
    batch = enc.encode(prompts)
    ids, mask = enc.tokenizer(prompts)
    assert [t.shape[0] for t in batch] == mask.sum(dim=1).tolist()
    assert [t.shape[0] for t in batch] == [len(enc.tokenizer.tokenize(p)) for p in prompts]
    assert batch[2].shape[0] == 1 and batch[3].shape[0] == 512
    enc.clear_cache()
    for prompt, together in zip(prompts, batch, strict=True):
        (alone,) = enc.encode([prompt])
        torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)
    # A prompt given twice gets two separate tensors.
    a, b = enc.encode([EN, EN])
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_padding_rows_do_not_change_real_tokens(tiny, official_sd):
    """Padding to 512 (masked keys) gives the real rows of an unpadded run, as in the reference."""
    ids = torch.tensor([[5, 17, 42, 99, 1]])
    padded = torch.nn.functional.pad(ids, (0, 507))
    mask = (padded != 0).long()
    with torch.no_grad():
        short = tiny(input_ids=ids).last_hidden_state[0]
        long = tiny(input_ids=padded, attention_mask=mask).last_hidden_state[0, :5]
    torch.testing.assert_close(long, short, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(official_encoder_forward(official_sd, padded, mask)[0, :5], short, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- cache


def test_encode_cache_skips_the_model(official_ckpt, monkeypatch):
    enc = load_text_encoder(official_ckpt)
    enc.cache = _EncodeCache(max_entries=3)
    calls: list[int] = []
    forward = enc.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(int(kwargs["input_ids"].shape[0]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(enc.model, "forward", counting_forward)
    first = enc.encode([EN, ZH])
    assert calls == [2]
    second = enc.encode([EN, ZH])
    assert calls == [2], "the second call ran the model"
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    second[0].zero_()  # the caller owns what it gets: the cache is not changed
    assert torch.equal(enc.encode([EN])[0], first[0]) and calls == [2]
    enc.encode([ZH, "A red car.", EN])
    assert calls == [2, 1], "only the new prompt runs"
    enc.encode(["one", "two"])
    assert len(enc.cache) == 3  # bounded: the oldest entries went
    # The dtype is part of the key: a cast model does not get the fp32 results.
    enc.to(dtype="bf16")
    assert enc.encode([EN])[0].dtype == torch.bfloat16 and calls[-1] == 1


def test_cache_survives_reloading_the_same_file(official_ckpt):
    first = load_text_encoder(official_ckpt)
    first.encode([MIXED])
    second = load_text_encoder(official_ckpt)
    assert second.identity == first.identity
    second.model.forward = None  # would fail if called
    assert torch.equal(second.encode([MIXED])[0], first.encode([MIXED])[0])


# --------------------------------------------------------------------------------------------------------- errors


def test_missing_and_corrupt_files(tmp_path, official_ckpt, tok_dir):
    with pytest.raises(MissingFileError, match="does not exist"):
        load_text_encoder(tmp_path / "nope.pth", tokenizer=tok_dir)
    bad_pth = tmp_path / OFFICIAL_FILENAME
    bad_pth.write_bytes(b"not a pickle at all")
    with pytest.raises(CorruptFileError, match="download it again"):
        load_text_encoder(bad_pth, tokenizer=tok_dir)
    bad_st = tmp_path / "umt5_xxl_fp16.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CorruptFileError):
        load_text_encoder(bad_st, tokenizer=tok_dir)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((official_ckpt / OFFICIAL_FILENAME).read_bytes()[:2000])
    with pytest.raises(CorruptFileError):
        load_text_encoder(truncated, tokenizer=tok_dir)
    bad_tok = tmp_path / "bad_tok"
    bad_tok.mkdir()
    (bad_tok / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(CorruptFileError, match="tokenizer.json"):
        load_text_encoder(official_ckpt / OFFICIAL_FILENAME, tokenizer=bad_tok)
    with pytest.raises(MissingFileError, match="Tokenizer .* does not exist"):
        load_text_encoder(official_ckpt / OFFICIAL_FILENAME, tokenizer=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="No tokenizer in"):
        load_text_encoder(official_ckpt / OFFICIAL_FILENAME, tokenizer=tmp_path / "empty")


def test_missing_tokenizer_is_a_clear_error(tmp_path, official_sd, tiny, monkeypatch):
    torch.save(official_sd, tmp_path / OFFICIAL_FILENAME)  # no google/umt5-xxl/ beside it
    with monkeypatch.context() as patch:  # it fails before the weights are read
        patch.setattr("wan_core.text.encoder.read_torch_file", lambda *a, **k: pytest.fail("weights were read"))
        with pytest.raises(MissingFileError, match="tokenizer="):
            load_text_encoder(tmp_path / OFFICIAL_FILENAME)
    plain = {k: v.contiguous() for k, v in tiny.state_dict().items() if k != keymap.EMBED_TOKENS}
    save_file(plain, tmp_path / "umt5_no_spiece.safetensors")
    with pytest.raises(MissingFileError, match="spiece_model"):
        load_text_encoder(tmp_path / "umt5_no_spiece.safetensors")
    with pytest.raises(CorruptFileError, match="sentencepiece"):
        text_encoder_from_state_dict({**tiny.state_dict(), "spiece_model": torch.arange(50, dtype=torch.uint8)})


def test_wrong_weights_are_named(tmp_path, official_sd, tok_dir, tiny):
    incomplete = {k: v for k, v in official_sd.items() if k != "blocks.1.ffn.fc1.weight"}
    with pytest.raises(KeyMismatchError, match="wi_1"):
        text_encoder_from_state_dict(incomplete, tokenizer=tok_dir)
    no_block = {k: v for k, v in official_sd.items() if not k.startswith("blocks.0.")}
    with pytest.raises(KeyMismatchError, match=r"block\(s\) \[0\]"):
        text_encoder_from_state_dict(no_block, tokenizer=tok_dir)
    with pytest.raises(KeyMismatchError, match="not a UMT5"):
        text_encoder_from_state_dict({"model.layers.0.mlp.weight": torch.zeros(2, 2)}, tokenizer=tok_dir)
    t5_like = {
        k: v for k, v in tiny.state_dict().items() if not k.startswith("encoder.block.1.layer.0.SelfAttention.rel")
    }
    with pytest.raises(ConfigMismatchError, match="not UMT5"):
        text_encoder_from_state_dict(t5_like, tokenizer=tok_dir)
    small = build_tiny_umt5(vocab_size=500)  # the demo tokenizer has 1024 ids
    with pytest.raises(ConfigMismatchError, match="1024 tokens"):
        text_encoder_from_state_dict(small.state_dict(), tokenizer=tok_dir)
    folder = tmp_path / "hf"
    tiny.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_ff": 256}))
    with pytest.raises(ConfigMismatchError, match="d_ff=256"):
        load_text_encoder(folder, tokenizer=tok_dir)
    with pytest.raises(InputError, match="dtype"):
        text_encoder_from_state_dict(tiny.state_dict(), tokenizer=tok_dir, dtype="int4")


# ------------------------------------------------------------------------------------------------ API and devices


def test_public_api(official_ckpt):
    assert wan_core.load_text_encoder is load_text_encoder and wan_core.TextEncoder is TextEncoder
    enc = load_text_encoder(official_ckpt)
    assert enc.to("cpu") is enc and enc.device == torch.device("cpu") and enc.d_model == 64
    assert isinstance(enc.encode(EN), list)  # a single string is one prompt
    with pytest.raises(InputError):
        enc.encode([EN, 3])  # type: ignore[list-item]
    assert "TextEncoder(" in repr(enc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_fp8_file_read_onto_the_gpu_has_the_cpu_loads_weights(tmp_path, tiny, spiece_bytes):
    """Read straight onto a GPU, an fp8 file is dequantized there: the weights are the CPU load's, bit for bit."""
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items() if k != keymap.EMBED_TOKENS}
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file({**quantize_fp8_scaled(sd), "spiece_model": torch.frombuffer(bytearray(spiece_bytes),
                                                                          dtype=torch.uint8)}, path)
    cpu, gpu = load_text_encoder(path), load_text_encoder(path, device="cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype == torch.bfloat16
    want = cpu.model.state_dict()
    for name, tensor in gpu.model.state_dict().items():
        assert tensor.device.type == "cuda" and torch.equal(tensor.cpu(), want[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_matches_cpu(official_ckpt, dtype):
    cpu = load_text_encoder(official_ckpt).encode([EN, ZH])
    enc = load_text_encoder(official_ckpt, device="cuda", dtype=dtype)
    assert enc.device.type == "cuda" and enc.dtype == dtype
    for got, want in zip(enc.encode([EN, ZH]), cpu, strict=True):
        assert got.device.type == "cuda" and got.dtype == dtype
        _close(got.cpu(), want, 0.05 if dtype != torch.float32 else 1e-3)
    moved = enc.to("cpu")
    assert moved.device.type == "cpu"
