"""Soft prompt init and safetensors prompt files."""

import pytest
import torch
import torch.nn as nn

from mptune.config import PromptConfig, PromptInit
from mptune.prompts import PromptFileError, PromptMeta, SoftPrompt, init_prompt_vectors, load_prompt, save_prompt


def test_vocab_init_uses_embeddings_of_the_first_ids():
    emb = nn.Embedding(100, 8)
    v = init_prompt_vectors(PromptConfig(length=20, init_vocab_size=10), emb, generator=torch.Generator().manual_seed(0))
    assert v.shape == (20, 8)
    table = emb.weight[:10].detach()
    assert all(((table - row).abs().sum(-1) < 1e-6).any() for row in v)


def _ids_of(rows, table):
    """The vocabulary id of each row (rows are exact embedding rows)."""
    return torch.cdist(rows, table).argmin(-1)


def test_vocab_init_draws_distinct_ids_among_the_first_ids():
    emb = nn.Embedding(6000, 16)
    cfg = PromptConfig(length=100, init_vocab_size=5000)  # ATTEMPT's l = 100 among the first 5,000 ids
    v = init_prompt_vectors(cfg, emb, generator=torch.Generator().manual_seed(0))
    ids = _ids_of(v, emb.weight.detach())
    torch.testing.assert_close(v, emb.weight.detach()[ids])
    assert len(set(ids.tolist())) == 100 and ids.max() < 5000
    again = _ids_of(init_prompt_vectors(cfg, emb, generator=torch.Generator().manual_seed(0)), emb.weight.detach())
    other = _ids_of(init_prompt_vectors(cfg, emb, generator=torch.Generator().manual_seed(1)), emb.weight.detach())
    assert torch.equal(ids, again) and not torch.equal(ids, other)


def test_vocab_init_longer_than_the_id_range_repeats_each_id_evenly():
    emb = nn.Embedding(50, 8)
    v = init_prompt_vectors(PromptConfig(length=25, init_vocab_size=10), emb, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(_ids_of(v, emb.weight.detach()), minlength=50)
    assert counts[10:].sum() == 0
    assert set(counts[:10].tolist()) <= {2, 3} and counts.sum() == 25  # 2 whole permutations + 5 of a third


def test_text_init_repeats_the_text_tokens():
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [3, 4]}

    emb = nn.Embedding(10, 4)
    v = init_prompt_vectors(PromptConfig(length=5, init=PromptInit.text, init_text="x"), emb, Tok())
    torch.testing.assert_close(v, emb.weight.detach()[[3, 4, 3, 4, 3]])


def test_random_init_matches_embedding_scale():
    emb = nn.Embedding(1000, 64)
    nn.init.normal_(emb.weight, std=3.0)
    v = init_prompt_vectors(PromptConfig(length=200, init="random"), emb, generator=torch.Generator().manual_seed(0))
    assert 2.5 < v.std().item() < 3.5


def test_scaled_embedding_modules_are_respected():
    class Scaled(nn.Embedding):  # like Gemma 3: the module itself multiplies by sqrt(d)
        def forward(self, ids):
            return super().forward(ids) * 4.0

    emb = Scaled(50, 16)
    v = init_prompt_vectors(PromptConfig(length=3, init_vocab_size=50), emb, generator=torch.Generator().manual_seed(1))
    assert v.abs().mean() > 3.0 * emb.weight.abs().mean().item()


def test_prompt_config_rejects_impossible_values():
    with pytest.raises(ValueError, match="prompt.length"):
        PromptConfig(length=0)
    with pytest.raises(ValueError, match="prompt.init_text"):
        PromptConfig(init="text")


def _meta(**kw):
    base = dict(kind="soft", backbone="tiny", length=4, dim=8, tasks=["sst2"])
    return PromptMeta(**{**base, **kw})


def test_save_load_round_trip(tmp_path):
    p = SoftPrompt(4, 8, torch.randn(4, 8))
    f = save_prompt(tmp_path / "prompt.safetensors", p.state_tensors(), _meta())
    tensors, meta = load_prompt(tmp_path, backbone="tiny", dim=8)
    torch.testing.assert_close(tensors["prompt"], p.weight.detach())
    assert meta.tasks == ["sst2"] and meta.length == 4 and f.is_file()
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_other_backbone_or_width_is_refused(tmp_path):
    save_prompt(tmp_path / "prompt.safetensors", {"prompt": torch.zeros(4, 8)}, _meta())
    with pytest.raises(PromptFileError, match="hidden size is 8.*16"):
        load_prompt(tmp_path, dim=16)
    with pytest.raises(PromptFileError, match="backbone 'tiny'"):
        load_prompt(tmp_path, backbone="t5-base")


def test_shape_metadata_disagreement_is_refused(tmp_path):
    with pytest.raises(PromptFileError, match="disagree"):
        save_prompt(tmp_path / "p.safetensors", {"prompt": torch.zeros(5, 8)}, _meta())


def test_corrupt_and_pickle_files_are_refused(tmp_path):
    bad = tmp_path / "prompt.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(PromptFileError, match="not a readable safetensors"):
        load_prompt(bad)
    pkl = tmp_path / "prompt.bin"
    pkl.write_bytes(b"whatever")
    with pytest.raises(PromptFileError, match="pickle"):
        load_prompt(pkl)


def test_foreign_safetensors_without_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"prompt": torch.zeros(4, 8)}, str(tmp_path / "prompt.safetensors"))
    with pytest.raises(PromptFileError, match="metadata key 'format' missing"):
        load_prompt(tmp_path)


# -- the registry of prompt kinds -------------------------------------------------


def _examples():
    from mptune.prompts.decomposed import DecomposedPrompt

    g = torch.Generator().manual_seed(0)
    return [SoftPrompt(4, 8, torch.randn(4, 8, generator=g), ["sst2"]),
            DecomposedPrompt(torch.randn(4, 8, generator=g), ["rte", "cb"], 2, torch.randn(2, 4, 2, generator=g),
                             torch.randn(2, 2, 8, generator=g))]


@pytest.mark.parametrize("i", range(2))
def test_every_kind_round_trips_through_its_registered_class(tmp_path, i):
    from mptune.prompts import PROMPT_KINDS, PromptModule, load_module, save_module

    module = _examples()[i]
    assert isinstance(module, PromptModule) and PROMPT_KINDS[module.kind] is type(module)
    save_module(tmp_path / "prompt.safetensors", module, "tiny")
    back, meta = load_module(tmp_path, backbone="tiny", dim=8)
    assert type(back) is type(module) and meta == module.meta("tiny") and back.tasks == module.tasks
    assert torch.equal(back(), module()) and back().shape == (len(module.tasks), 4, 8)
    assert set(module.state_tensors()) == set(module.tensor_ranks)
    # a pickle of the same tensors: the kind is read off the tensor names, the shapes give the metadata
    torch.save(module.state_tensors(), str(tmp_path / "p.pt"))
    tensors, pmeta = load_prompt(tmp_path / "p.pt", allow_pickle=True)
    assert pmeta.kind == module.kind and (pmeta.length, pmeta.dim, pmeta.rank) == (meta.length, 8, meta.rank)


def test_task_rows_and_unknown_kinds(tmp_path):
    import re

    from mptune.prompts import PROMPT_KINDS

    soft, dec = _examples()
    assert soft.task_index("anything") == 0  # one prompt serves any task
    assert dec.task_index("cb") == 1
    with pytest.raises(KeyError, match="not in this prompt"):
        dec.task_index("sst2")
    with pytest.raises(PromptFileError, match=re.escape(f"unknown prompt kind 'lora'; valid: {sorted(PROMPT_KINDS)}")):
        save_prompt(tmp_path / "x.safetensors", {"prompt": torch.zeros(4, 8)}, _meta(kind="lora"))
