"""Tiny random-weight backbones built from configs (no downloads), saved as real
model folders so tests exercise the same loading path users do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than they save

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MPTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))

CORPUS = [
    "sst2 sentence: a charming and funny movie that never drags",
    "rte sentence1: the cat sat on the mat sentence2: a cat is sitting",
    "positive negative entailment not_entailment 0 1 2 3 4 5 . , ? !",
    "question: who wrote the book ? context: the book was written by ada in 1843",
]


def make_tokenizer(bos: bool):
    """A byte-level BPE tokenizer (any text tokenises) with <pad>, </s>, <s>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer)
    if bos:  # Llama-style: BOS in front of the text
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    else:  # T5-style: EOS closes the source
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   bos_token="<s>", unk_token="<unk>")


def build_tiny_t5(path: Path) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    tok = make_tokenizer(bos=False)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                   num_decoder_layers=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                   dropout_rate=0.1)
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_tiny_llama(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(bos=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session", params=["t5", "llama"])
def tiny_model_dir(request, tiny_t5_dir, tiny_llama_dir) -> Path:
    return tiny_t5_dir if request.param == "t5" else tiny_llama_dir


@pytest.fixture()
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
