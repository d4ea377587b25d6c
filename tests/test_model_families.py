"""Prompts enter any HF causal LM in the same space as token embeddings.

If the prompt rows are the embeddings of tokens x, the backbone's prompted pass
must equal the plain model run on input_ids = [x ; source ; target]: this checks
embedding scaling (Gemma multiplies by sqrt(d) in forward), position ids under
left padding (GPT-2's learned positions, RoPE elsewhere) and the target alignment.
"""

import pytest
import torch

from conftest import make_tokenizer
from mptune.backbone import Backbone
from mptune.data import TextEncoder, collate


def _model(family: str, vocab: int):
    import transformers as T

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if family == "gemma":
        cfg = T.GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=1, head_dim=8, **common)
        return T.GemmaForCausalLM(cfg)
    if family == "qwen2":
        cfg = T.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, **common)
        return T.Qwen2ForCausalLM(cfg)
    if family == "gpt2":
        cfg = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
        return T.GPT2LMHeadModel(cfg)
    cfg = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, **common)
    return T.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("family", ["llama", "gemma", "qwen2", "gpt2"])
def test_prompt_of_token_embeddings_equals_plain_tokens(family):
    tok = make_tokenizer(bos=True)
    bb = Backbone(_model(family, len(tok)).eval(), tok, name=family)
    enc = TextEncoder(tok, bb.kind)
    x = torch.tensor([5, 9, 17])
    with torch.no_grad():
        table = bb.embed(x).unsqueeze(0)  # [1, 3, d]: what init=text produces
    pairs = [("sst2 sentence: a charming and funny movie", "positive"), ("sst2 sentence: dull", "negative")]
    feats = [enc.feature(s, t) for s, t in pairs]
    with torch.no_grad():
        out = bb(table, collate(feats, bb.kind, bb.pad_id))
    for i, f in enumerate(feats):
        ids = torch.tensor([x.tolist() + f.source + f.target])
        with torch.no_grad():
            ref = bb.model(input_ids=ids).logits[0, -len(f.target) - 1:-1]
        got = out.logits[i, -len(f.target):]
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)
        assert (out.labels[i, -len(f.target):] == torch.tensor(f.target)).all()
