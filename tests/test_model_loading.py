"""Where a backbone comes from: a GGUF file, a Hub id (resolved from the local cache) or a folder.

Everything is built here, offline: the GGUF files are written with the real ``gguf`` package
writer from the tiny Llama of conftest (the way llama.cpp's converter lays them out, Q/K rows
permuted), and the Hub id resolves from a fake Hugging Face cache laid out in tmp. Each must give
the same Backbone as the model folder: same token ids, same logits.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mptune.backbone import Backbone, load_backbone
from mptune.config import ModelConfig
from mptune.data import TextEncoder, collate

gguf = pytest.importorskip("gguf")

SENTENCES = [
    "sst2 sentence: a charming and funny movie that never drags",
    "who wrote the book ? context: the book was written by ada in 1843",
    "Unseen wörds, CAPS & digits 90210 still tokenise byte by byte!",
]
EXAMPLES = [(SENTENCES[0], "positive", 0), (SENTENCES[1], "ada", 1), ("rte sentence1: the cat sat", "entailment", 1)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test here may reach the network, whatever the caller's environment says: offline mode on
    (env for subprocesses, the constant huggingface_hub read at import for this process), and any
    socket connection fails loudly."""
    import socket

    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Intra-op threads buy nothing on 32-wide matrices, and on a busy machine their barriers stall
    (2 threads: ~13 ms per tiny linear when a core is taken); restored after this module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder_backbone(tiny_llama_dir) -> Backbone:
    return load_backbone(ModelConfig(name=str(tiny_llama_dir)))


def _batch(bb: Backbone) -> dict:
    """A left-padded, mixed-task batch tokenised by the backbone's *own* tokenizer."""
    enc = TextEncoder(bb.tokenizer, bb.kind)
    return collate([enc.feature(s, t, k) for s, t, k in EXAMPLES], bb.kind, bb.pad_id)


def _prompts(bb: Backbone) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, bb.hidden_size, generator=g) * 0.05


def _assert_same_backbone(got: Backbone, want: Backbone, atol: float = 1e-5) -> None:
    """Same tokens (the batch is built by each backbone's own tokenizer) and same logits."""
    bg, bw = _batch(got), _batch(want)
    for key in ("input_ids", "attention_mask", "labels", "task_index"):
        assert torch.equal(bg[key], bw[key]), key
    with torch.no_grad():
        lg = got(_prompts(got), bg).logits
        lw = want(_prompts(want), bw).logits
        # and the bare HF forward, without prompts or mptune's batching
        hg = got.model(input_ids=bg["input_ids"], attention_mask=bg["attention_mask"]).logits
        hw = want.model(input_ids=bw["input_ids"], attention_mask=bw["attention_mask"]).logits
    torch.testing.assert_close(lg, lw, atol=atol, rtol=1e-4)
    torch.testing.assert_close(hg, hw, atol=atol, rtol=1e-4)


# -- GGUF --------------------------------------------------------------------------------------


def _permute_rows(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf ``LlamaModel.permute`` of the Q/K projection rows (HF's
    rotate-half layout -> GGML's interleaved rope pairs); transformers' loader reverses it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_tokens(tokenizer) -> tuple[list[str], list[int], list[str]]:
    """tokens (byte-level spelling, in id order), token types, merges ("a b") as llama.cpp's gpt2 vocab."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = model["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = set(tokenizer.all_special_tokens)
    types = [int(gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL) for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, types, merges


def write_llama_gguf(model, tok, out: Path, qtype=None, tied: bool = True) -> Path:
    """An HF Llama (+ its byte-level BPE tokenizer) as a llama.cpp-style GGUF file: llama.* metadata,
    gpt2 tokenizer metadata, tensors in F32 (or 2-D weights in `qtype`); `tied=False` writes
    output.weight too (a tied model's head is its embedding)."""
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32 if qtype is None else gguf.LlamaFileType.MOSTLY_Q8_0))

    tokens, types, merges = _gguf_tokens(tok)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_add_bos_token(True)  # the tiny Llama's tokenizer puts <s> in front of the text
    w.add_add_eos_token(False)

    def put(name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if qtype is not None and arr.ndim == 2:  # llama.cpp keeps norms (1-D) in F32
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, arr)

    nh, nkv = c.num_attention_heads, c.num_key_value_heads
    put("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", _permute_rows(sd[p + "self_attn.q_proj.weight"], nh, nh))
        put(f"blk.{i}.attn_k.weight", _permute_rows(sd[p + "self_attn.k_proj.weight"], nh, nkv))
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    if not tied:  # llama.cpp writes output.weight only for an untied head
        put("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def gguf_files(tiny_llama_dir, tmp_path_factory) -> dict[str, Path]:
    """Each file alone in its folder (no config.json / tokenizer files beside it to fall back on)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    files = {}
    for kind, kw in {"f32": {}, "f32-untied": {"tied": False},
                     "q8_0": {"qtype": gguf.GGMLQuantizationType.Q8_0}}.items():
        d = tmp_path_factory.mktemp(f"gguf-{kind}")
        files[kind] = write_llama_gguf(model, tok, d / f"tiny-llama-{kind}.gguf", **kw)
        assert sorted(os.listdir(d)) == [files[kind].name]
    return files


@pytest.fixture(scope="module")
def gguf_backbone(gguf_files):
    """load_backbone(ModelConfig(name=<path to the .gguf>)), once per file kind."""
    loaded: dict[str, Backbone] = {}

    def get(kind: str) -> Backbone:
        if kind not in loaded:
            loaded[kind] = load_backbone(ModelConfig(name=str(gguf_files[kind])))
        return loaded[kind]

    return get


def _dequantised_reference(tiny_llama_dir: Path, qtype) -> Backbone:
    """The folder's model with every 2-D weight rounded through `qtype` by the gguf package itself."""
    ref = load_backbone(ModelConfig(name=str(tiny_llama_dir)))
    with torch.no_grad():
        for p in ref.model.parameters():
            if p.ndim == 2:
                q = gguf.quants.quantize(p.numpy(), qtype)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, qtype)).view_as(p))
    return ref


def test_gguf_file_writer_and_reader_agree_on_layout(gguf_files, tiny_llama_dir):
    """The file is what llama.cpp would write: arch/tokenizer metadata and permuted Q/K rows."""
    r = gguf.GGUFReader(str(gguf_files["f32"]))
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("tokenizer.ggml.model") == "gpt2"
    assert field("llama.attention.head_count_kv") == 2 and field("llama.block_count") == 2
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names and "blk.1.ffn_down.weight" in names and len(names) == 2 + 9 * 2
    from safetensors.torch import load_file

    k_hf = load_file(tiny_llama_dir / "model.safetensors")["model.layers.0.self_attn.k_proj.weight"].numpy()
    k_gguf = next(t for t in r.tensors if t.name == "blk.0.attn_k.weight").data
    assert k_gguf.shape == k_hf.shape and not np.array_equal(k_gguf, k_hf)  # permuted, not copied
    assert np.array_equal(k_gguf, _permute_rows(k_hf, 4, 2))


@pytest.mark.parametrize("kind", ["f32", "f32-untied"])
def test_gguf_file_loads_the_same_backbone_as_the_folder(kind, gguf_files, gguf_backbone, folder_backbone):
    path = gguf_files[kind]
    bb = gguf_backbone(kind)
    assert bb.name == str(path) and bb.kind == folder_backbone.kind
    cfg, want = bb.model.config, folder_backbone.model.config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings"):
        assert getattr(cfg, key) == getattr(want, key), key
    assert cfg.tie_word_embeddings is (kind == "f32")
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (2, 1, 0)
    assert bb.dtype == torch.float32 and not any(p.requires_grad for p in bb.model.parameters())
    # weights round-trip exactly, Q/K permutation undone
    got_sd, want_sd = bb.model.state_dict(), folder_backbone.model.state_dict()
    assert got_sd.keys() == want_sd.keys()
    for key in want_sd:
        assert torch.equal(got_sd[key], want_sd[key]), key
    _assert_same_backbone(bb, folder_backbone, atol=1e-6)


def test_gguf_tokenizer_matches_the_original(gguf_backbone, folder_backbone):
    """The tokenizer rebuilt from GGUF metadata (vocab + merges + special ids) is the same byte-level
    BPE: same ids for text (with BOS in front), same special tokens, same decoding.

    Not guaranteed: the vocabulary size. transformers builds a GGUF "gpt2" tokenizer through
    GPT2Tokenizer, whose default special token "<|endoftext|>" gets added behind the file's
    vocabulary when the file has none (5.24: id 374 here), so len(tokenizer) can exceed the
    model's vocab_size. Every token of the file keeps its id; only such extras lie past the
    embedding table, and they are no bos/eos/pad/unk role."""
    bb = gguf_backbone("f32")
    tok, ref = bb.tokenizer, folder_backbone.tokenizer
    vocab, ref_vocab = tok.get_vocab(), ref.get_vocab()
    assert {t: vocab.get(t) for t in ref_vocab} == ref_vocab
    extras = {t: i for t, i in vocab.items() if t not in ref_vocab}
    n_emb = bb.model.get_input_embeddings().num_embeddings
    assert n_emb == len(ref_vocab) and all(i >= n_emb for i in extras.values()), extras
    assert all(tok.added_tokens_decoder[i].special for i in extras.values()), extras
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "bos_token_id", "eos_token_id",
                 "pad_token_id", "unk_token_id"):
        assert getattr(tok, attr) == getattr(ref, attr), attr
    for text in SENTENCES + [" leading space", "", "<s> literal specials </s>"]:
        ids = tok(text)["input_ids"]
        assert ids == ref(text)["input_ids"], text
        assert ids[:1] == [ref.bos_token_id]
        assert tok(text, add_special_tokens=False)["input_ids"] == ref(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_quantised_gguf_is_dequantised_on_load(gguf_files, gguf_backbone, tiny_llama_dir, folder_backbone):
    """Q8_0 weights come back as the gguf package's own dequantisation of them: same logits as the
    folder model with its weights rounded the same way, and close to the F32 model."""
    qtype = gguf.GGMLQuantizationType.Q8_0
    r = gguf.GGUFReader(str(gguf_files["q8_0"]))
    assert {t.tensor_type for t in r.tensors if t.name.endswith("attn_q.weight")} == {qtype}
    bb = gguf_backbone("q8_0")
    assert bb.dtype == torch.float32
    _assert_same_backbone(bb, _dequantised_reference(tiny_llama_dir, qtype), atol=1e-5)
    with torch.no_grad():
        b = _batch(bb)
        got = bb.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        f32 = folder_backbone.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert 0 < (got - f32).abs().max() < 0.05 * f32.abs().max()


def test_gguf_file_in_a_folder_via_gguf_file_field(gguf_files, folder_backbone):
    """model.name = folder + model.gguf_file = file name is the same as the file path."""
    path = gguf_files["f32"]
    bb = load_backbone(ModelConfig(name=str(path.parent), gguf_file=path.name))
    _assert_same_backbone(bb, folder_backbone, atol=1e-6)


# -- Hub id, resolved from the local cache ------------------------------------------------------

REPO_ID = "mptune-test/tiny-llama"


def fake_hub_cache(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> str:
    """Lay out `folder` as huggingface_hub's cache does after a download of `repo_id`:
    models--{org}--{name}/blobs/<hash> (the content), snapshots/<commit>/<file> (a relative
    symlink to the blob; a copy where symlinks are unavailable) and refs/<revision> (the commit)."""
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snap = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        blob = blobs / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        try:
            (snap / f.name).symlink_to(os.path.relpath(blob, snap))
        except OSError:
            shutil.copyfile(blob, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / revision).write_text(commit)  # no trailing newline, as huggingface_hub writes it
    return commit


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch, tiny_llama_dir) -> tuple[Path, str]:
    """A fake HF_HOME whose hub cache holds REPO_ID. huggingface_hub reads HF_HOME/HF_HUB_CACHE into
    `huggingface_hub.constants` at import time, and both it and transformers look the values up
    there at call time: so the env (for any subprocess) *and* the constants are patched."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    commit = fake_hub_cache(cache, REPO_ID, tiny_llama_dir)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache, commit


def test_hub_id_resolves_from_the_local_cache_offline(hub_cache, folder_backbone):
    from huggingface_hub import constants, try_to_load_from_cache

    cache, commit = hub_cache
    assert constants.HF_HUB_OFFLINE
    found = try_to_load_from_cache(REPO_ID, "config.json")
    assert found is not None and Path(found).parent == cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit
    bb = load_backbone(ModelConfig(name=REPO_ID))
    assert bb.name == REPO_ID
    assert bb.model.config._name_or_path == REPO_ID and bb.tokenizer.name_or_path == REPO_ID
    _assert_same_backbone(bb, folder_backbone, atol=1e-6)


def test_hub_id_not_in_the_cache_fails_offline_without_network(hub_cache):
    """Offline and not cached: an OSError from transformers (which, in 5.24, does not name the repo)
    and no connection attempt (the autouse guard would turn one into an AssertionError)."""
    with pytest.raises(OSError, match="offline|cache"):
        load_backbone(ModelConfig(name="mptune-test/not-cached"))


# -- clear errors ------------------------------------------------------------------------------


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "model-Q4_K_M.gguf"
    with pytest.raises(FileNotFoundError, match=r"model\.name: GGUF file not found: .*model-Q4_K_M\.gguf"):
        load_backbone(ModelConfig(name=str(missing)))


def test_gguf_file_field_naming_a_missing_file_is_an_error(gguf_files):
    folder = gguf_files["f32"].parent
    with pytest.raises(OSError, match=re.escape("missing.gguf")):
        load_backbone(ModelConfig(name=str(folder), gguf_file="missing.gguf"))


def test_folder_without_a_model_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises((OSError, ValueError), match=re.escape(str(empty))):
        load_backbone(ModelConfig(name=str(empty)))


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_unknown_local_folder_is_a_clear_error(tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    name = str(tmp_path / "no-such-model") if how == "absolute" else "./models/no-such-model"
    with pytest.raises(Exception) as info:
        load_backbone(ModelConfig(name=name))
    assert isinstance(info.value, FileNotFoundError), f"{type(info.value).__name__}: {info.value}"
    assert name in str(info.value) and "not found" in str(info.value)
