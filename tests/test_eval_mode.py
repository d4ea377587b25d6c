"""eval.mode (rank | generate) and eval.match (exact | lenient): label tasks predicted by greedy
decoding and compared with the label strings (ATTEMPT's evaluation), with invalid predictions
(matching no label) wrong and counted in every split's invalid_rate."""

import json

import pytest
import torch

from mptune.backbone import load_backbone
from mptune.cli import main
from mptune.config import ConfigError, EvalConfig, ModelConfig, load_yaml, parse
from mptune.data import TextEncoder
from mptune.evaluation import evaluate
from mptune.recipes.pipeline import PipelineConfig
from mptune.recipes.prompt_tune import PromptTuneConfig
from mptune.tasks import Example, Source, Task, get_task

YESNO = Task(name="yesno", group="test", kind="classification", source=Source(hub="none/none"), template="{text}",
             label_words=("yes", "no"), metrics=("accuracy", "f1"))
GENERATE = EvalConfig(mode="generate", match="exact")


def _examples(golds):
    return [Example(source=f"yesno text {i}", target=YESNO.label_words[g], label=g) for i, g in enumerate(golds)]


def test_match_exact_is_attempts_lenient_ignores_case():
    ex = _examples([0, 0, 1])
    preds = [" yes ", "Yes", "no"]
    exact, lenient = YESNO.score(ex, preds, "exact"), YESNO.score(ex, preds, "lenient")
    assert exact["accuracy"] == pytest.approx(200 / 3) and exact["invalid_rate"] == pytest.approx(100 / 3)
    assert lenient["accuracy"] == 100.0 and lenient["invalid_rate"] == 0.0
    assert YESNO.score(ex, [0, 0, 1])["invalid_rate"] == 0.0  # rank: an index is always a label


def test_binary_f1_counts_an_invalid_prediction_as_the_wrong_class():
    # golds [no, yes, no, yes] (1 = "no" is F1's positive class); invalid -> 1 - gold (ATTEMPT, T5)
    m = YESNO.score(_examples([1, 0, 1, 0]), ["no", "maybe", "", "no"], "exact")
    assert m["invalid_rate"] == 50.0 and m["accuracy"] == 25.0
    assert m["f1"] == pytest.approx(40.0)  # TP 1, FP 2 (the invalid one at gold 0 + the last), FN 1


def test_regression_invalid_rate_counts_unparsable_numbers():
    stsb = get_task("stsb")
    ex = [Example(source="s", target="1.0", label=v) for v in (1.0, 2.0, 3.0, 4.0)]
    assert stsb.score(ex, ["1.0", "two", "3", "4.2"])["invalid_rate"] == 25.0


def _always(model, token: int):
    """Greedy decoding emits `token` at every step (never EOS): a logit bias on the output layer."""
    bias = torch.zeros(model.config.vocab_size)
    bias[token] = 1e4
    return model.get_output_embeddings().register_forward_hook(lambda m, i, out: out + bias[: out.shape[-1]])


def _follow(t5, step: dict[int, int]):
    """T5 emits step[previous token] (EOS after any other): a logit bias read off the decoder inputs, so
    teacher-forced label scoring and greedy decoding are forced alike."""
    eos = t5.config.eos_token_id

    def hook(module, args, kwargs, out):
        nxt = torch.tensor([[step.get(t, eos) for t in row] for row in kwargs["decoder_input_ids"].tolist()])
        out.logits = out.logits + 1e4 * torch.nn.functional.one_hot(nxt, out.logits.shape[-1])
        return out

    return t5.register_forward_hook(hook, with_kwargs=True)


def _setup(model_dir):
    bb = load_backbone(ModelConfig(name=str(model_dir)))
    enc = TextEncoder(bb.tokenizer, bb.kind, max_source_length=32, max_target_length=16)
    table = torch.randn(1, 4, bb.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.5
    return bb, enc, lambda: table


def test_generated_text_that_is_no_label_is_wrong_and_invalid(tiny_model_dir):
    bb, enc, prompts = _setup(tiny_model_dir)
    qmark = bb.tokenizer("?", add_special_tokens=False)["input_ids"][0]
    ex = _examples([0, 1, 0])
    with _always(bb.model, qmark):
        gen = evaluate(bb, prompts, YESNO, ex, enc, batch_size=2, how=GENERATE, progress=False)
        rank = evaluate(bb, prompts, YESNO, ex, enc, batch_size=2, progress=False)
    budget = max(len(enc.target(w)) for w in YESNO.label_words)  # the longest label + EOS
    assert gen.predictions == ["?" * budget] * 3
    assert gen.metrics["accuracy"] == 0.0 and gen.metrics["invalid_rate"] == 100.0
    assert [r["prediction_index"] for r in gen.rows] == [-1] * 3 and gen.rows[0]["prediction"] == "?" * budget
    assert rank.metrics["invalid_rate"] == 0.0 and all(isinstance(p, int) for p in rank.predictions)


@pytest.mark.parametrize("label", ["yes", "no"])
def test_rank_and_generate_agree_when_the_model_emits_a_label(tiny_t5_dir, label):
    bb, enc, prompts = _setup(tiny_t5_dir)
    seq = enc.target(label)  # label tokens + EOS, forced token after token from T5's decoder start
    assert len(set(seq)) == len(seq)
    ex = _examples([0, 1, 1, 0, 1])
    with _follow(bb.model, dict(zip([bb.model.config.decoder_start_token_id] + seq[:-1], seq))):
        gen = evaluate(bb, prompts, YESNO, ex, enc, batch_size=2, how=GENERATE, progress=False)
        rank = evaluate(bb, prompts, YESNO, ex, enc, batch_size=2, progress=False)
    assert gen.predictions == [label] * 5
    assert [r["prediction_index"] for r in gen.rows] == rank.predictions == [YESNO.label_words.index(label)] * 5
    assert gen.metrics == rank.metrics and gen.metrics["invalid_rate"] == 0.0


def test_config_rejects_unknown_values_naming_the_key():
    base = {"model": {"name": "m"}, "task": "rte", "output_dir": "o"}
    with pytest.raises(ConfigError, match="eval.mode"):
        parse(PromptTuneConfig, {**base, "eval": {"mode": "beam"}})
    with pytest.raises(ConfigError, match="eval.match"):
        parse(PromptTuneConfig, base, ["eval.match=fuzzy"])
    with pytest.raises(ConfigError, match="eval.*modes"):  # an unknown key in the section
        parse(PipelineConfig, {"model": {"name": "m"}, "sources": ["rte"], "targets": ["rte"], "output_dir": "o",
                               "eval": {"modes": "rank"}})
    cfg = parse(PromptTuneConfig, base, ["eval.mode=generate"])
    assert (cfg.eval.mode, cfg.eval.match) == ("generate", "lenient")  # defaults: rank, lenient


def test_stage_evaluate_and_predict_under_generate(tmp_path, tiny_t5_dir):
    from synthetic import write_all

    data = write_all(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["prompt-tune", f"model.name={tiny_t5_dir}", "task=rte", f"output_dir={out}", f"data.data_dir={data}",
                 "train.max_steps=2", "train.eval_every=2", "prompt.length=4", "train.batch_size=4",
                 "data.eval_limit=6", "eval.mode=generate", "eval.match=exact"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["tasks"]["rte"]
    assert all(0.0 <= metrics[s]["invalid_rate"] <= 100.0 for s in ("dev", "test"))
    assert load_yaml(out / "config.yaml")["eval"] == {"mode": "generate", "match": "exact"}
    rows = [json.loads(x) for x in (out / "predictions_rte_test.jsonl").read_text().splitlines()]
    invalid = sum(r["prediction_index"] == -1 for r in rows)
    assert metrics["test"]["invalid_rate"] == pytest.approx(100.0 * invalid / len(rows))

    # evaluate follows the stage's eval section unless given; the metrics of the end of training again
    assert main(["evaluate", f"prompt={out}", f"data.data_dir={data}", "data.eval_limit=6"]) == 0
    assert json.loads((out / "eval-rte-test" / "metrics.json").read_text())["metrics"] == pytest.approx(metrics["test"])
    assert main(["evaluate", f"prompt={out}", f"data.data_dir={data}", "data.eval_limit=6", "eval.mode=rank",
                 f"output_dir={tmp_path / 'ranked'}"]) == 0
    assert json.loads((tmp_path / "ranked" / "metrics.json").read_text())["metrics"]["invalid_rate"] == 0.0

    # predict writes the generated text and the label it matches; no label scores (nothing is ranked)
    inp, pred = tmp_path / "in.jsonl", tmp_path / "pred.jsonl"
    inp.write_text(json.dumps({"sentence1": "A cat sat.", "sentence2": "A cat sits."}) + "\n")
    assert main(["predict", f"prompt={out}", f"input={inp}", f"output={pred}"]) == 0
    (row,) = [json.loads(x) for x in pred.read_text().splitlines()]
    words, i = get_task("rte").label_words, row["prediction_index"]
    assert "scores" not in row and isinstance(row["prediction"], str)
    assert row["prediction"] == words[i] if i >= 0 else (i == -1 and row["prediction"] not in words)
