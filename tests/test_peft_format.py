"""PEFT multitask-prompt export/import (mode=multitask): PEFT's model gives mptune's logits; round trips;
bad folders refused. The single-task PROMPT_TUNING export is tested in test_export_peft.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mptune.backbone import ModelKind, load_backbone
from mptune.config import ModelConfig
from mptune.data import TextEncoder, collate
from mptune.prompts import PromptFileError, load_prompt, save_prompt
from mptune.prompts.decomposed import DecomposedPrompt
from mptune.prompts.peft_format import PeftExportMode, export_multitask, import_peft
from mptune.recipes.export_peft import ExportPeftConfig, run

peft = pytest.importorskip("peft")

TASKS = ["rte", "sst2", "mnli"]
PAIRS = [("sst2 sentence: a charming and funny movie", "positive"),
         ("rte sentence1: the cat sat on the mat sentence2: a cat is sitting", "entailment"),
         ("question: who wrote the book ?", "ada")]


def random_prompt(dim: int, rank: int, length: int = 5, seed: int = 0) -> DecomposedPrompt:
    g = torch.Generator().manual_seed(seed)
    K = len(TASKS)
    return DecomposedPrompt(torch.randn(length, dim, generator=g), TASKS, rank,
                            torch.randn(K, length, rank, generator=g), torch.randn(K, rank, dim, generator=g))


def peft_model(model_dir: Path, kind: ModelKind, adapter: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if kind == ModelKind.SEQ2SEQ else AutoModelForCausalLM
    return peft.PeftModel.from_pretrained(cls.from_pretrained(model_dir), adapter).eval()


def batches(backbone):
    """Batches laid out the same way for mptune and PEFT.

    seq2seq: both put [prompt ; source] in the encoder (pads on the right, masked
    the same way) and derive decoder inputs from the labels, so one mixed batch of
    different lengths and task ids works.
    causal: PEFT prepends the prompt to the *padded* row ([prompt ; pad* ; text])
    and lets the model use positions 0..n-1, while mptune gives position ids
    cumsum(mask)-1. The layouts coincide only without padding, so each batch holds
    one example repeated once per task id: equal-length rows, every task, no pads.
    """
    enc = TextEncoder(backbone.tokenizer, backbone.kind)
    if backbone.kind == ModelKind.SEQ2SEQ:
        feats = [enc.feature(s, t, k) for k, (s, t) in enumerate(PAIRS)]
        yield collate(feats, backbone.kind, backbone.pad_id)
    else:
        for s, t in PAIRS:
            yield collate([enc.feature(s, t, k) for k in range(len(TASKS))], backbone.kind, backbone.pad_id)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("model", ["t5", "llama"])
def test_peft_logits_match_mptune(model, rank, tiny_t5_dir, tiny_llama_dir, tmp_path):
    model_dir = tiny_t5_dir if model == "t5" else tiny_llama_dir
    backbone = load_backbone(ModelConfig(name=str(model_dir)))
    prompt = random_prompt(backbone.hidden_size, rank)
    export_multitask(prompt, tmp_path / "peft", backbone.kind, base_model=str(model_dir))
    pm = peft_model(model_dir, backbone.kind, tmp_path / "peft")
    cfg = pm.peft_config["default"]
    assert (cfg.num_tasks, cfg.num_ranks, cfg.num_transformer_submodules) == (len(TASKS), rank, 1)

    checked = set()
    with torch.no_grad():
        for batch in batches(backbone):
            ours = backbone(prompt(), batch)
            labels = batch["labels"]
            if backbone.kind == ModelKind.SEQ2SEQ:
                theirs = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                            task_ids=batch["task_index"]).logits
            else:
                assert bool(batch["attention_mask"].all())  # no padding: see batches()
                T = labels.shape[1]
                theirs = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            task_ids=batch["task_index"]).logits[:, -(T + 1):-1]
            target = labels != -100
            assert theirs.shape == ours.logits.shape
            diff = (theirs - ours.logits)[target].abs().max().item()
            assert diff < 1e-5, f"max abs diff {diff}"
            # The prompt matters: task 0's prompt for every row changes the logits.
            other = backbone(prompt(), dict(batch, task_index=torch.zeros_like(batch["task_index"])))
            assert (other.logits - ours.logits)[target].abs().max() > 1e-4
            checked |= set(batch["task_index"].tolist())
    assert checked == set(range(len(TASKS)))


def test_round_trip_and_recipe(tiny_t5_dir, tmp_path):
    prompt = random_prompt(32, rank=2)
    meta = prompt.meta(str(tiny_t5_dir))
    save_prompt(tmp_path / "stage" / "prompt.safetensors", prompt.state_tensors(), meta)

    # export through the recipe (backbone from the prompt's metadata: no config.yaml here)
    summary = run(ExportPeftConfig(prompt=str(tmp_path / "stage"), output_dir=str(tmp_path / "peft"),
                                   mode=PeftExportMode.multitask))
    assert summary["tasks"] == TASKS and summary["backbone"] == str(tiny_t5_dir)
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM" and config["num_virtual_tokens"] == 5
    weights = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert sorted(weights) == ["prefix_task_cols", "prefix_task_rows", "prompt_embeddings"]

    back, back_meta = import_peft(tmp_path / "peft")
    assert back_meta == meta
    for k, v in prompt.state_tensors().items():
        assert torch.equal(back.state_tensors()[k], v), k

    # import through the recipe: a stage folder mptune reads back, with its backbone in config.yaml
    run(ExportPeftConfig(prompt=str(tmp_path / "peft"), output_dir=str(tmp_path / "imported"), direction="import"))
    tensors, meta2 = load_prompt(tmp_path / "imported", backbone=str(tiny_t5_dir), dim=32, kind="decomposed")
    assert meta2 == meta and all(torch.equal(tensors[k], v) for k, v in prompt.state_tensors().items())
    assert str(tiny_t5_dir) in (tmp_path / "imported" / "config.yaml").read_text()

    # names PEFT does not carry fall back to task ids, or come from the caller
    weights_file = tmp_path / "peft" / "adapter_model.safetensors"
    save_file(load_file(weights_file), weights_file, metadata={"format": "pt"})
    assert import_peft(tmp_path / "peft")[1].tasks == ["task0", "task1", "task2"]
    assert import_peft(tmp_path / "peft", tasks=["a", "b", "c"])[1].tasks == ["a", "b", "c"]


def _config(d: Path) -> dict:
    return json.loads((d / "adapter_config.json").read_text())


def _set_config(d: Path, **kw) -> None:
    (d / "adapter_config.json").write_text(json.dumps({**_config(d), **kw}))


def _edit_weights(d: Path, fn) -> None:
    w = load_file(d / "adapter_model.safetensors")
    fn(w)
    save_file(w, d / "adapter_model.safetensors", metadata={"format": "pt"})


def _pickle_only(d: Path) -> None:
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")


MALFORMED = {
    "no config": (lambda d: (d / "adapter_config.json").unlink(), "adapter_config.json missing"),
    "bad json": (lambda d: (d / "adapter_config.json").write_text("{oops"), "invalid JSON"),
    "lora": (lambda d: _set_config(d, peft_type="LORA"), "peft_type"),
    "task type": (lambda d: _set_config(d, task_type="TOKEN_CLS"), "task_type"),
    "negative": (lambda d: _set_config(d, num_tasks=-1), "num_tasks must be a positive integer"),
    "pickle": (_pickle_only, "pickle files are refused"),
    "not safetensors": (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x00" * 20), "not a readable"),
    "missing tensor": (lambda d: _edit_weights(d, lambda w: w.pop("prefix_task_rows")), "expected"),
    "shape": (lambda d: _set_config(d, num_tasks=4), r"prefix_task_cols is \(3, 5, 1\).*expected.*\(4, 5, 1\)"),
    "nan": (lambda d: _edit_weights(d, lambda w: w["prompt_embeddings"].fill_(float("nan"))), "NaN"),
    "decoder prompt": (lambda d: _set_config(d, num_transformer_submodules=None), "num_transformer_submodules=2"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_folder_refused(case, tmp_path):
    export_multitask(random_prompt(16, rank=1), tmp_path, "seq2seq", base_model="t5-small")
    corrupt, message = MALFORMED[case]
    corrupt(tmp_path)
    with pytest.raises(PromptFileError, match=message):
        import_peft(tmp_path)


def test_missing_folder_and_wrong_task_count(tmp_path):
    with pytest.raises(PromptFileError, match="not found"):
        import_peft(tmp_path / "nope")
    export_multitask(random_prompt(16, rank=1), tmp_path, "causal", base_model="llama")
    with pytest.raises(PromptFileError, match="2 task names"):
        import_peft(tmp_path, tasks=["a", "b"])
