"""Single-task PEFT export (mode=prompt_tuning): every task of any prompt kind becomes a PROMPT_TUNING
folder whose PEFT model gives mptune's logits on padded batches; import is exact; docs/export.md's
prompt-embeddings snippet builds inputs that give mptune's logits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from mptune.backbone import IGNORE, ModelKind, load_backbone
from mptune.config import ConfigError, ModelConfig
from mptune.data import TextEncoder, collate
from mptune.prompts import PromptFileError, SoftPrompt, load_prompt, save_module
from mptune.prompts.decomposed import DecomposedPrompt
from mptune.recipes.export_peft import ExportPeftConfig, run

peft = pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[1]
TASKS = ["rte", "sst2", "mnli"]
PAIRS = [("sst2 sentence: a charming and funny movie that never drags", "positive"),  # different lengths:
         ("rte sentence1: the cat sat sentence2: a cat", "not_entailment"),  # every batch is padded
         ("question: who ?", "ada")]


def make_prompt(kind: str, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if kind == "soft":
        return SoftPrompt(5, dim, torch.randn(5, dim, generator=g) * 2, ["sst2"])
    K = len(TASKS)
    return DecomposedPrompt(torch.randn(5, dim, generator=g), TASKS, 2, torch.randn(K, 5, 2, generator=g),
                            torch.randn(K, 2, dim, generator=g))


def export(prompt, model_dir: Path, tmp_path: Path, **kw) -> Path:
    """A prompt file whose metadata names the backbone (no config.yaml), exported through the recipe."""
    save_module(tmp_path / "stage" / "prompt.safetensors", prompt, str(model_dir))
    run(ExportPeftConfig(prompt=str(tmp_path / "stage"), output_dir=str(tmp_path / "peft"), **kw))
    return tmp_path / "peft"


def peft_model(model_dir: Path, kind: ModelKind, adapter: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if kind == ModelKind.SEQ2SEQ else AutoModelForCausalLM
    return peft.PeftModel.from_pretrained(cls.from_pretrained(model_dir), adapter).eval()


def peft_target_logits(pm, backbone, batch, l: int, left: bool = False) -> torch.Tensor:
    """PEFT's logits at mptune's target positions [B, T, V], from the same real tokens.

    seq2seq: the same encoder batch ([source ; pad*], mask) and labels. causal: each row's real tokens
    (source + target) right-padded (left=False) or left-padded (left=True), with their attention mask;
    PEFT puts the l prompt vectors in front of the row as given."""
    if backbone.kind == ModelKind.SEQ2SEQ:
        return pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits
    am, labels = batch["attention_mask"].bool(), batch["labels"]
    rows = [ids[m] for ids, m in zip(batch["input_ids"], am)]
    S = max(len(r) for r in rows)
    pad = [torch.full((S - len(r),), backbone.pad_id) for r in rows]
    ids = torch.stack([torch.cat([p, r]) if left else torch.cat([r, p]) for r, p in zip(rows, pad)])
    mask = torch.stack([torch.cat([torch.zeros(len(p)), torch.ones(len(r))]) if left else
                        torch.cat([torch.ones(len(r)), torch.zeros(len(p))]) for r, p in zip(rows, pad)]).long()
    logits = pm(input_ids=ids, attention_mask=mask).logits  # [B, l + S, V]
    T, out = labels.shape[1], []
    for b, r in enumerate(rows):
        end = l + (S if left else len(r))  # one past the row's last real token in PEFT's layout
        out.append(logits[b, end - T - 1:end - 1])  # position p predicts token p + 1
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["soft", "decomposed"])
@pytest.mark.parametrize("model", ["t5", "llama"])
def test_prompt_tuning_folders_give_mptunes_logits_on_padded_batches(model, kind, tiny_t5_dir, tiny_llama_dir,
                                                                     tmp_path):
    model_dir = tiny_t5_dir if model == "t5" else tiny_llama_dir
    backbone = load_backbone(ModelConfig(name=str(model_dir)))
    prompt = make_prompt(kind, backbone.hidden_size)
    out = export(prompt, model_dir, tmp_path)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(prompt.tasks)
    assert json.loads((out / "stage.json").read_text())["tasks"] == prompt.tasks
    enc = TextEncoder(backbone.tokenizer, backbone.kind)
    worst = 0.0
    for k, task in enumerate(prompt.tasks):
        config = json.loads((out / task / "adapter_config.json").read_text())
        assert (config["peft_type"], config["num_virtual_tokens"], config["token_dim"]) == \
            ("PROMPT_TUNING", 5, backbone.hidden_size)
        pm = peft_model(model_dir, backbone.kind, out / task)
        batch = collate([enc.feature(s, t, k) for s, t in PAIRS], backbone.kind, backbone.pad_id)
        assert not batch["attention_mask"].bool().all()  # padded
        with torch.no_grad():
            ours = backbone(prompt(), batch)
            theirs = peft_target_logits(pm, backbone, batch, prompt.length)
        target = ours.labels != IGNORE
        diff = (theirs - ours.logits)[target].abs().max().item()
        worst = max(worst, diff)
        assert diff < 1e-5, f"{task}: max abs diff {diff}"
        if kind == "decomposed":  # the materialised task prompt matters: another task's row changes the logits
            other = backbone(prompt(), dict(batch, task_index=torch.full_like(batch["task_index"], (k + 1) % 3)))
            assert (other.logits - ours.logits)[target].abs().max() > 1e-4
    print(f"{model}/{kind}: max |PEFT - mptune| at target positions = {worst:.3g}")


@pytest.mark.parametrize("model", ["t5", "llama"])
def test_left_padding_in_peft_shifts_the_text_as_docs_export_md_says(model, tiny_t5_dir, tiny_llama_dir, tmp_path):
    """docs/export.md: PEFT numbers positions over the padded row, so left pads move the text away
    from the prompt; unpadded rows stay equal. If this fails, PEFT changed: update the docs."""
    model_dir = tiny_t5_dir if model == "t5" else tiny_llama_dir
    backbone = load_backbone(ModelConfig(name=str(model_dir)))
    prompt = make_prompt("soft", backbone.hidden_size)
    pm = peft_model(model_dir, backbone.kind, export(prompt, model_dir, tmp_path) / "sst2")
    enc = TextEncoder(backbone.tokenizer, backbone.kind)
    batch = collate([enc.feature(s, t) for s, t in PAIRS], backbone.kind, backbone.pad_id)
    with torch.no_grad():
        ours = backbone(prompt(), batch)
        if backbone.kind == ModelKind.SEQ2SEQ:  # left-pad the encoder input
            n, S = batch["attention_mask"].sum(1), batch["input_ids"].shape[1]
            ids = torch.stack([torch.cat([torch.full((S - k,), backbone.pad_id), r[:k]])
                               for r, k in zip(batch["input_ids"], n)])
            left = dict(batch, input_ids=ids, attention_mask=(ids != backbone.pad_id).long())
            theirs = peft_target_logits(pm, backbone, left, prompt.length)
        else:
            theirs = peft_target_logits(pm, backbone, batch, prompt.length, left=True)
    padded = ~batch["attention_mask"].bool().all(1)
    target = ours.labels != IGNORE
    for b in range(len(PAIRS)):
        diff = (theirs[b] - ours.logits[b])[target[b]].abs().max().item()
        assert (diff > 1e-4) if padded[b] else (diff < 1e-5), (b, diff)


def test_lm_eval_harness_loglikelihood_procedure_scores_like_mptune(tiny_llama_dir, tmp_path):
    """lm-evaluation-harness's causal log-likelihood on a peft= model, as its lm_eval/models/huggingface.py
    does it (HFLM._loglikelihood_tokens, main branch): input = (context + continuation)[:-1], right-padded
    with 0 (pad_and_concat), no attention mask; the continuation's logits are sliced at
    [ctx_len - contlen : ctx_len] with ctx_len = inplen + (logits.shape[0] - padding_len_inp). Same
    per-example sums of the target log-probs as mptune's rank classification."""
    from mptune.backbone import sequence_logprob

    backbone = load_backbone(ModelConfig(name=str(tiny_llama_dir)))
    prompt = make_prompt("decomposed", backbone.hidden_size)
    k = TASKS.index("mnli")
    pm = peft_model(tiny_llama_dir, backbone.kind, export(prompt, tiny_llama_dir, tmp_path) / "mnli")
    enc = TextEncoder(backbone.tokenizer, backbone.kind)
    feats = [enc.feature(s, t, k) for s, t in PAIRS]
    with torch.no_grad():
        ours = backbone(prompt(), collate(feats, backbone.kind, backbone.pad_id))
        want = sequence_logprob(ours.logits, ours.labels)
        inps = [torch.tensor(f.source + f.target)[:-1] for f in feats]
        padding_len_inp = max(len(x) for x in inps)
        batched = torch.stack([torch.cat([x, torch.zeros(padding_len_inp - len(x), dtype=torch.long)]) for x in inps])
        multi_logits = torch.log_softmax(pm(batched).logits, dim=-1)
        for b, (f, logits, inp) in enumerate(zip(feats, multi_logits, inps)):
            contlen, ctx_len = len(f.target), len(inp) + (logits.shape[0] - padding_len_inp)
            cont = logits[ctx_len - contlen:ctx_len]
            got = cont.gather(-1, torch.tensor(f.target).unsqueeze(-1)).sum()
            assert abs(got.item() - want[b].item()) < 1e-4, (b, got.item(), want[b].item())


def _adapter(folder: Path):
    """config, metadata and tensor bytes of an adapter folder."""
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        weights = {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}, f.metadata()
    return json.loads((folder / "adapter_config.json").read_text()), weights


def test_import_round_trip_is_exact(tiny_t5_dir, tmp_path):
    for kind in ("soft", "decomposed"):
        prompt = make_prompt(kind, 32, seed=3)
        out = export(prompt, tiny_t5_dir, tmp_path / kind)
        with torch.no_grad():
            table = prompt()
        for k, task in enumerate(prompt.tasks):
            back = tmp_path / kind / f"imported-{task}"
            summary = run(ExportPeftConfig(prompt=str(out / task), output_dir=str(back), direction="import"))
            assert summary["tasks"] == [task] and summary["kind"] == "soft"
            tensors, meta = load_prompt(back, backbone=str(tiny_t5_dir), dim=32, kind="soft")
            assert torch.equal(tensors["prompt"], table[k]), task  # bit for bit, P_t materialised
            assert (meta.tasks, meta.length) == ([task], 5)
            if kind == "soft":  # the very file that was exported
                assert meta == prompt.meta(str(tiny_t5_dir))
                assert torch.equal(tensors["prompt"], prompt.state_tensors()["prompt"])
            # exported again from the imported folder: the same adapter (safetensors orders header keys freely)
            run(ExportPeftConfig(prompt=str(back), output_dir=str(tmp_path / kind / f"again-{task}")))
            first, again = out / task, tmp_path / kind / f"again-{task}" / task
            assert _adapter(again) == _adapter(first)


def test_peft_trained_t5_adapter_with_two_submodules_imports(tiny_t5_dir, tmp_path):
    """PEFT's own PROMPT_TUNING for T5 defaults to num_transformer_submodules=2 (2l rows, the first l used)."""
    from transformers import AutoModelForSeq2SeqLM

    pm = peft.get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir),
                             peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4))
    with torch.no_grad():  # a "trained" prompt: not PEFT's init
        emb = pm.prompt_encoder["default"].embedding.weight
        emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(5)) * 2)
    assert emb.shape[0] == 8
    pm.save_pretrained(tmp_path / "peft")
    run(ExportPeftConfig(prompt=str(tmp_path / "peft"), output_dir=str(tmp_path / "mine"), direction="import",
                         tasks=["sst2"]))
    backbone = load_backbone(ModelConfig(name=str(tiny_t5_dir)))
    from mptune.prompts import load_prompt_module

    module, meta = load_prompt_module(tmp_path / "mine", backbone)
    assert meta.tasks == ["sst2"] and module.length == 4
    enc = TextEncoder(backbone.tokenizer, backbone.kind)
    batch = collate([enc.feature(s, t) for s, t in PAIRS], backbone.kind, backbone.pad_id)
    pm.eval()
    with torch.no_grad():
        ours = backbone(module(), batch)
        theirs = peft_target_logits(pm, backbone, batch, 4)
    assert (theirs - ours.logits)[ours.labels != IGNORE].abs().max() < 1e-5


def test_export_refuses_what_it_cannot_write(tiny_t5_dir, tmp_path):
    soft = make_prompt("soft", 32)
    save_module(tmp_path / "soft" / "prompt.safetensors", soft, str(tiny_t5_dir))
    with pytest.raises(ConfigError, match="multitask needs a decomposed prompt"):
        run(ExportPeftConfig(prompt=str(tmp_path / "soft"), output_dir=str(tmp_path / "o1"), mode="multitask"))
    with pytest.raises(ConfigError, match=r"\['nope'\] not among the prompt's tasks"):
        run(ExportPeftConfig(prompt=str(tmp_path / "soft"), output_dir=str(tmp_path / "o2"), tasks=["nope"]))
    bad = DecomposedPrompt(torch.zeros(5, 32), ["a/b", "c"])
    save_module(tmp_path / "dec" / "prompt.safetensors", bad, str(tiny_t5_dir))
    with pytest.raises(ConfigError, match="cannot name an adapter folder"):
        run(ExportPeftConfig(prompt=str(tmp_path / "dec"), output_dir=str(tmp_path / "o3")))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    # importing the parent of per-task folders says which folders to import
    out = export(make_prompt("decomposed", 32), tiny_t5_dir, tmp_path / "dec2")
    with pytest.raises(PromptFileError, match=r"one adapter per task \['mnli', 'rte', 'sst2'\]"):
        run(ExportPeftConfig(prompt=str(out), output_dir=str(tmp_path / "o4"), direction="import"))
    with pytest.raises(PromptFileError, match="2 task names"):
        run(ExportPeftConfig(prompt=str(out / "rte"), output_dir=str(tmp_path / "o5"), direction="import",
                             tasks=["x", "y"]))


def _edit_config(d: Path, **kw) -> None:
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**cfg, **kw}))


def _edit_weights(d: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    w = load_file(d / "adapter_model.safetensors")
    fn(w)
    save_file(w, d / "adapter_model.safetensors", metadata={"format": "pt"})


BAD_PROMPT_TUNING = {
    "causal decoder rows": (lambda d: _edit_config(d, num_transformer_submodules=2), "num_transformer_submodules=2"),
    "length": (lambda d: _edit_config(d, num_virtual_tokens=6), r"prompt_embeddings is \(5, 16\).*\(6, 16\)"),
    "no length": (lambda d: _edit_config(d, num_virtual_tokens=None), "num_virtual_tokens must be a positive"),
    "extra tensor": (lambda d: _edit_weights(d, lambda w: w.update(x=torch.zeros(1))), "expected"),
    "nan": (lambda d: _edit_weights(d, lambda w: w["prompt_embeddings"].fill_(float("nan"))), "NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROMPT_TUNING))
def test_malformed_prompt_tuning_folder_refused(case, tmp_path):
    from mptune.prompts.peft_format import export_prompt_tuning, import_peft

    export_prompt_tuning(torch.randn(5, 16), tmp_path, "causal", base_model="llama", task="rte")
    corrupt, message = BAD_PROMPT_TUNING[case]
    corrupt(tmp_path)
    with pytest.raises(PromptFileError, match=message):
        import_peft(tmp_path)


def test_cli_export_and_import(tiny_t5_dir, tmp_path, capsys):
    from mptune.cli import main

    save_module(tmp_path / "stage" / "prompt.safetensors", make_prompt("decomposed", 32), str(tiny_t5_dir))
    assert main(["export-peft", f"prompt={tmp_path / 'stage'}", f"output_dir={tmp_path / 'pt'}", "tasks=[sst2]"]) == 0
    assert [p.name for p in (tmp_path / "pt").iterdir() if p.is_dir()] == ["sst2"]
    assert main(["export-peft", f"prompt={tmp_path / 'stage'}", f"output_dir={tmp_path / 'mt'}", "mode=multitask"]) == 0
    assert json.loads((tmp_path / "mt" / "adapter_config.json").read_text())["peft_type"] == "MULTITASK_PROMPT_TUNING"
    assert main(["export-peft", "direction=import", f"prompt={tmp_path / 'pt' / 'sst2'}",
                 f"output_dir={tmp_path / 'back'}"]) == 0
    assert load_prompt(tmp_path / "back")[1].tasks == ["sst2"]
    assert main(["export-peft", f"prompt={tmp_path / 'stage'}", f"output_dir={tmp_path / 'x'}", "mode=lora"]) != 0
    assert "mode" in capsys.readouterr().err


def _docs_snippet() -> str:
    text = (REPO / "docs" / "export.md").read_text()
    m = re.search(r"<!-- snippet: prompt-embeds[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/export.md lost its prompt-embeds snippet"
    return m.group(1)


def test_docs_prompt_embeds_snippet_gives_mptunes_logits(tiny_llama_dir, tmp_path):
    backbone = load_backbone(ModelConfig(name=str(tiny_llama_dir)))
    prompt = make_prompt("decomposed", backbone.hidden_size)
    out = export(prompt, tiny_llama_dir, tmp_path)
    k = TASKS.index("sst2")
    ns = {"model_dir": str(tiny_llama_dir), "adapter_dir": str(out / "sst2")}
    exec(compile(_docs_snippet(), "docs/export.md", "exec"), ns)  # the documented code, as written
    enc = TextEncoder(backbone.tokenizer, backbone.kind)
    feats = [enc.feature(s, t, k) for s, t in PAIRS]
    assert feats[0].source == ns["tokenizer"](PAIRS[0][0])["input_ids"]  # the snippet's tokenisation
    batch = collate(feats, backbone.kind, backbone.pad_id)  # mptune: one padded batch
    with torch.no_grad():
        ours = backbone(prompt(), batch)
        for b, f in enumerate(feats):  # the engine: one request per example, no padding
            embeds = ns["prompt_embeds"](f.source + f.target)
            assert embeds.shape == (prompt.length + len(f.source) + len(f.target), backbone.hidden_size)
            logits = ns["model"](inputs_embeds=embeds[None]).logits[0]
            T = len(f.target)
            theirs = logits[-T - 1:-1]
            mine = ours.logits[b][ours.labels[b] != IGNORE]
            assert (theirs - mine).abs().max() < 1e-5
