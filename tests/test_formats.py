"""Text formats (data.format): ATTEMPT's strings for every paper task (golden strings written from
ATTEMPT's attempt/data/tasks.py @ b5121e5, the lines cited with each), the natural templates, a
user task's own formats, unknown names, and a stage folder that reads its prompt back in the
format it was trained on."""

import json

import pytest
import yaml

from mptune.cli import main
from mptune.config import ConfigError
from mptune.tasks import PAPER_TASKS, get_task, task_from_dict
from mptune.tasks.definition import TaskDefinitionError, task_definition
from mptune.tasks.formats import pad_punctuation
from mptune.tasks.loading import per_answer
from test_task_files import TINY, write_task

P, H = "A man plays a guitar.", "A person makes music."
WSC_TEXT = "Mark told Pete many lies about himself, which Pete included in his book. He should have been more truthful."
RECORD = {"passage": "A bird sat.\n@highlight\nPenguins swim\n@highlight\nNo flight",
          "query": "The @placeholder is a bird.", "entities": ["penguin", "pigeon", "potato"],
          "answers": ["penguin", "pigeon"]}  # the Hub's form: sorted, without duplicates
SQUAD = {"question": "Who won (in 2016)?", "context": "The Broncos won 24-10.",
         "answers": {"text": ["The Broncos", "Broncos"], "answer_start": [0, 4]}}

# task -> (Hub-shaped row, ATTEMPT's source, ATTEMPT's target); tasks.py line of the preprocessor
GOLDEN = {
    "mnli": ({"premise": P, "hypothesis": H, "label": 2},  # 398-402: premise first
             f"mnli premise: {P} hypothesis: {H}", "2"),
    "qnli": ({"question": "Who plays?", "sentence": P, "label": 1},  # 455-459
             f"qnli question: Who plays? sentence: {P}", "1"),
    "qqp": ({"question1": "Why?", "question2": "How?", "label": 0},  # 379-383
            "qqp question1: Why? question2: How?", "0"),
    "sst2": ({"sentence": "a gripping film", "label": 1}, "sst2 sentence: a gripping film", "1"),  # 305-308
    "stsb": ({"sentence1": P, "sentence2": H, "label": 3.3},  # 359-363 + data/utils.py:17: to 0.1 (T5: "3.2")
             f"stsb sentence1: {P} sentence2: {H}", "3.3"),
    "mrpc": ({"sentence1": P, "sentence2": H, "label": 1}, f"mrpc sentence1: {P} sentence2: {H}", "1"),  # 266-270
    "rte": ({"sentence1": P, "sentence2": H, "label": 0}, f"rte sentence1: {P} sentence2: {H}", "0"),  # 475-479
    "cola": ({"sentence": "The cat sat.", "label": 1}, "cola sentence: The cat sat.", "1"),  # 286-289
    "wnli": ({"sentence1": P, "sentence2": H, "label": 0}, f"wnli sentence1: {P} sentence2: {H}", "0"),  # 494-498
    "boolq": ({"question": "is it wet", "passage": "Water is wet.", "label": 1},  # 513-517
              "superglue-boolq question: is it wet passage: Water is wet.", "1"),
    "cb": ({"premise": P, "hypothesis": H, "label": 2},  # 551-555: premise first
           f"superglue-cb premise: {P} hypothesis: {H}", "2"),
    "wic": ({"sentence1": "A bank.", "sentence2": "The bank.", "word": "bank", "label": 0},  # 621-626
            "superglue-wic sentence1: A bank. sentence2: The bank. word: bank", "0"),
    "wsc": ({"text": WSC_TEXT, "span1_index": 0, "span1_text": "Mark", "span2_index": 13, "span2_text": "He",
             "label": 1},  # 662-679: the pronoun's index moves by the noun's 2 marks
            "superglue-wsc.fixed text: * Mark * told Pete many lies about himself, which Pete included in his "
            "book. # He # should have been more truthful.", "1"),
    "multirc": ({"paragraph": "The <b>cat</b> sat.<br>It slept.", "question": "Who sat?", "answer": "cat",
                 "idx": {"paragraph": 0, "question": 3, "answer": 0}, "label": 1},  # 591-606: markup removed
                "superglue-multirc question: Who sat? answer: cat paragraph: The cat sat. It slept.", "1"),
    "record": (RECORD,  # 718-740: the "record query:" text after the task name; the highlights rewritten
               "superglue-record record query: The @placeholder is a bird. entities: penguin, pigeon, potato "
               "passage: A bird sat. Penguins swim. No flight", "penguin"),
    # 151-158 (Squad, which nq/hotpotqa/searchqa/newsqa map to, 810-814): punctuation padded. ATTEMPT reads
    # the answers as one tab-joined string and pads it before split("\t"), so several answers would become
    # one target "The Broncos Broncos" (a bug): here the first answer is the target, all are scored
    "squad": (SQUAD, "squad question: Who won ( in 2016 ) ?  context: The Broncos won 24 - 10 . ", "The Broncos"),
    "nq": (SQUAD, "squad question: Who won ( in 2016 ) ?  context: The Broncos won 24 - 10 . ", "The Broncos"),
    "hotpotqa": (SQUAD, "squad question: Who won ( in 2016 ) ?  context: The Broncos won 24 - 10 . ", "The Broncos"),
    "searchqa": (SQUAD, "squad question: Who won ( in 2016 ) ?  context: The Broncos won 24 - 10 . ", "The Broncos"),
    "newsqa": (SQUAD, "squad question: Who won ( in 2016 ) ?  context: The Broncos won 24 - 10 . ", "The Broncos"),
    "yelp_polarity": ({"text": "Great tacos.", "label": 1}, "yelp_polarity sentence: Great tacos.", "1"),  # 322-325
    "scitail": ({"sentence1": P, "sentence2": H, "gold_label": "neutral"},  # 246-251: entailment 0, neutral 1
                f"scitail premise: {P} hypothesis: {H}", "1"),
    "paws": ({"sentence1": P, "sentence2": H, "label": 1}, f"paws sentence1: {P} sentence2: {H}", "1"),  # 779-783
    # 759-764, with ATTEMPT's bug fixed: it shows option1 twice ("option0: trophy option1: trophy")
    "winogrande": ({"sentence": "It is too big for the _.", "option1": "trophy", "option2": "case", "answer": "2"},
                   "winogrande sentence: It is too big for the _. option0: trophy option1: case", "1"),
    "copa": ({"premise": P, "question": "effect", "choice1": "Sound.", "choice2": "Silence.", "label": 0},  # 570-575
             f"superglue-copa premise: {P} choice1: Sound. choice2: Silence.", "0"),
    "superglue_rte": ({"premise": P, "hypothesis": H, "label": 1},  # 532-536
                      f"superglue-rte premise: {P} hypothesis: {H}", "1"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_attempt_format_gives_attempts_strings(name):
    row, source, target = GOLDEN[name]
    task = get_task(name).with_format("attempt")
    ex = task.to_example(dict(row))
    # sources are stripped of surrounding whitespace (ATTEMPT keeps padded SQuAD's trailing space; T5's
    # tokenizer drops it): the only difference
    assert (ex.source, ex.target) == (source.strip(), target)
    if task.label_words:  # labels are ATTEMPT's class indices as strings
        assert task.label_words == tuple(str(i) for i in range(len(task.label_words)))
        assert task.choices(ex)[ex.label] == target


def test_every_paper_task_has_an_attempt_golden():
    assert set(PAPER_TASKS) <= set(GOLDEN)


def test_attempt_details():
    # raw label names in the files still map to the same label ids
    mnli = get_task("mnli").with_format("attempt")
    assert mnli.to_example({"premise": P, "hypothesis": H, "label": "contradiction"}).target == "2"
    # ReCoRD: generation, one training example per answer; a file row (entities in passage order,
    # repeated) renders as the Hub's sorted unique form
    record = get_task("record").with_format("attempt")
    assert record.kind.value == "generation" and record.per_answer
    messy = record.to_example(dict(RECORD, entities=["potato", "penguin", "pigeon", "penguin"],
                                   answers=["pigeon", "penguin", "pigeon"]))
    assert messy.source == GOLDEN["record"][1] and messy.answers == ["penguin", "pigeon"]
    rows = per_answer([messy, get_task("record").with_format("attempt").to_example(dict(RECORD))])
    assert [r.target for r in rows] == ["penguin", "pigeon"] * 2 and len(rows) == 4
    # SQuAD: every answer padded as ATTEMPT pads; the first is the target
    assert get_task("squad").with_format("attempt").to_example(dict(SQUAD)).answers == ["The Broncos", "Broncos"]
    assert pad_punctuation("Fran\u00e7ois's (1843) 24-10.") == "Fran\u00e7ois ' s ( 1843 ) 24 - 10 . "
    assert pad_punctuation("snake_case\tand  spaces") == "snake_case and spaces"
    # WSC: a span that does not start at its word index stays unmarked, as in ATTEMPT
    wsc = get_task("wsc").with_format("attempt")
    ex = wsc.to_example({"text": "He saw Mark.", "span1_index": 0, "span1_text": "Mark", "span2_index": 0,
                         "span2_text": "He", "label": 0})
    assert ex.source == "superglue-wsc.fixed text: # He # saw Mark."
    # ... after the Hub's wsc.fixed span fix (case of the word at the index, no final "."), as ATTEMPT read them
    ex = wsc.to_example({"text": "Mark saw him.", "span1_index": 0, "span1_text": "mark.", "span2_index": 2,
                         "span2_text": "him", "label": 1})
    assert ex.source == "superglue-wsc.fixed text: * Mark * saw # him #."
    # the t5 format is untouched
    assert get_task("mnli").with_format("t5") is get_task("mnli")
    assert get_task("stsb").to_example({"sentence1": P, "sentence2": H, "label": 3.3}).target == "3.2"


NATURAL = {  # task -> (row, source, target)
    "sst2": ({"sentence": "a gripping film", "label": 1}, "sentence: a gripping film\nsentiment:", "positive"),
    "yelp_polarity": ({"text": "Cold tacos.", "label": 0}, "review: Cold tacos.\nsentiment:", "negative"),
    "vader_movie": ({"id": "1", "rating": "2.5", "text": "A gem."}, "sentence: A gem.\nsentiment:", "positive"),
    "cola": ({"sentence": "The cat sat.", "label": 1},
             "Sentence: The cat sat.\nIs this sentence grammatical? Answer yes or no.\nAnswer:", "yes"),
    "mnli": ({"premise": P, "hypothesis": H, "label": 1}, f"Premise: {P}\nHypothesis: {H}\nDoes the premise imply "
             "the hypothesis? Answer yes, maybe or no.\nAnswer:", "maybe"),
    "qnli": ({"question": "Who plays?", "sentence": P, "label": 0}, f"Question: Who plays?\nSentence: {P}\nDoes "
             "the sentence answer the question? Answer yes or no.\nAnswer:", "yes"),
    "rte": ({"sentence1": P, "sentence2": H, "label": 1}, f"Premise: {P}\nHypothesis: {H}\nDoes the premise imply "
            "the hypothesis? Answer yes or no.\nAnswer:", "no"),
    "cb": ({"premise": P, "hypothesis": H, "label": 1}, f"Premise: {P}\nHypothesis: {H}\nDoes the premise imply "
           "the hypothesis? Answer yes, no or maybe.\nAnswer:", "no"),
    "qqp": ({"question1": "Why?", "question2": "How?", "label": 1}, "Question 1: Why?\nQuestion 2: How?\nDo the "
            "two questions ask the same thing? Answer yes or no.\nAnswer:", "yes"),
    "mrpc": ({"sentence1": P, "sentence2": H, "label": 0}, f"Sentence 1: {P}\nSentence 2: {H}\nDo the two "
             "sentences mean the same thing? Answer yes or no.\nAnswer:", "no"),
    "boolq": ({"question": "is it wet", "passage": "Water is wet.", "label": 1},
              "Passage: Water is wet.\nQuestion: is it wet?\nAnswer yes or no.\nAnswer:", "yes"),
    "stsb": ({"sentence1": P, "sentence2": H, "label": 3.3}, f"Sentence 1: {P}\nSentence 2: {H}\nHow similar are "
             "the two sentences in meaning, from 0 (unrelated) to 5 (the same)?\nScore:", "3.2"),  # T5's 0.2 grid
    "squad": (SQUAD, "Context: The Broncos won 24-10.\nQuestion: Who won (in 2016)?\nAnswer:", "The Broncos"),
    "newsqa": (SQUAD, "Context: The Broncos won 24-10.\nQuestion: Who won (in 2016)?\nAnswer:", "The Broncos"),
}


@pytest.mark.parametrize("name", sorted(NATURAL))
def test_natural_format_renders(name):
    row, source, target = NATURAL[name]
    ex = get_task(name).with_format("natural").to_example(dict(row))
    assert (ex.source, ex.target) == (source, target)


def test_natural_label_words_take_the_kinds_leading_space():
    """No label word starts with a space: a causal target continues the source after one (kinds.py), so
    "positive" is scored as the tokens of " positive" there and as "positive" for T5."""
    from conftest import make_tokenizer
    from mptune.data import TextEncoder

    words = {w for t in PAPER_TASKS for w in get_task(t).with_format("natural").label_words or ()}
    assert words and not [w for w in words if w != w.strip()]
    for kind, bos in (("causal", True), ("seq2seq", False)):
        tok = make_tokenizer(bos)
        enc = TextEncoder(tok, kind)
        got = tok.decode(enc.target("positive")[:-1])
        assert got == (" positive" if kind == "causal" else "positive")


def test_fallback_to_t5_is_logged_once(caplog):
    from mptune.tasks import base

    base._fallbacks.discard(("wnli", "natural"))
    wnli = get_task("wnli")
    with caplog.at_level("WARNING"):
        assert wnli.with_format("natural") is wnli and wnli.with_format("natural") is wnli
    assert [r.getMessage() for r in caplog.records].count("task wnli has no natural format; using its t5 format") == 1


def test_unknown_format_names_data_format(tmp_path, capsys):
    from mptune.config import parse
    from mptune.recipes.prompt_tune import PromptTuneConfig

    with pytest.raises(ValueError, match="data.format"):
        get_task("rte").with_format("t6")
    with pytest.raises(ConfigError, match="data.format"):
        parse(PromptTuneConfig, {"model": {"name": "x"}, "task": "rte", "output_dir": str(tmp_path),
                                 "data": {"format": "t6"}})
    assert main(["prompt-tune", "model.name=x", "task=rte", f"output_dir={tmp_path}", "data.format=t6"]) != 0
    assert "data.format" in capsys.readouterr().err and not tmp_path.joinpath("config.yaml").exists()


def test_user_task_declares_formats(tmp_path):
    d = {"name": "colour", "hub": "x/y", "template": "colour: {text}", "label_words": ["no", "yes"],
         "formats": {"natural": {"template": "Text: {text}\nAny colour?\nAnswer:"}, "attempt": {
             "template": "colour sentence: {text}", "label_words": ["0", "1"]}}}
    t = task_from_dict(d)
    assert task_definition(t.with_format("attempt")) == task_definition(t)  # the record, formats included
    assert task_from_dict(task_definition(t)) == t
    nat = t.with_format("natural")
    assert nat.to_example({"text": "red", "label": "yes"}).source == "Text: red\nAny colour?\nAnswer:"
    att = t.with_format("attempt").to_example({"text": "red", "label": "yes"})
    assert (att.source, att.target) == ("colour sentence: red", "1")
    assert task_from_dict({k: v for k, v in d.items() if k != "formats"}).formats == {}  # as before
    for bad, key in (({"t5": {"template": "{text}"}}, "formats.t5"), ({"natural": "x"}, "formats.natural"),
                     ({"natural": {"template": "{text}", "label_words": ["a"]}}, "formats.natural.label_words")):
        with pytest.raises(TaskDefinitionError, match=key):
            task_from_dict({**d, "formats": bad})


def test_stage_folder_reads_its_prompt_in_the_trained_format(tmp_path, tiny_llama_dir, monkeypatch):
    """A task file with a natural format, trained with data.format=natural and the labels loss: evaluate and
    predict on the folder (no data.format given) render the same text."""
    monkeypatch.chdir(tmp_path)
    f = write_task(tmp_path / "mine", formats={"natural": {"template": "Text: {text}\nAny colour?\nAnswer:"}})
    out = tmp_path / "run"
    assert main(["prompt-tune", f"model.name={tiny_llama_dir}", f"task={f}", f"output_dir={out}",
                 "data.format=natural", "train.target_loss=labels", *TINY]) == 0
    assert json.loads((out / "tasks" / "formats.json").read_text()) == {"colour": "natural"}
    trained = [json.loads(x) for x in (out / "predictions_colour_test.jsonl").read_text().splitlines()]
    assert trained and all(r["source"].startswith("Text: ") for r in trained)
    assert yaml.safe_load((out / "tasks" / "colour.yaml").read_text())["template"] == "colour: {text}"
    assert main(["evaluate", f"prompt={out}", "split=test"]) == 0
    rows = [json.loads(x) for x in (out / "eval-colour-test" / "predictions_test.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == [r["source"] for r in trained]
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in trained]
    inp, pred = tmp_path / "in.jsonl", tmp_path / "pred.jsonl"
    inp.write_text(json.dumps({"text": "a red car"}) + "\n")
    assert main(["predict", f"prompt={out}", f"input={inp}", f"output={pred}"]) == 0
    assert json.loads(pred.read_text())["source"] == "Text: a red car\nAny colour?\nAnswer:"


def test_registry_task_in_attempt_format_through_a_stage(tmp_path, tiny_t5_dir):
    from synthetic import write_glue_rte

    write_glue_rte(data := tmp_path / "data")
    out = tmp_path / "pt"
    assert main(["prompt-tune", f"model.name={tiny_t5_dir}", "task=rte", f"output_dir={out}",
                 f"data.data_dir={data}", "data.format=attempt", *TINY]) == 0
    assert json.loads((out / "tasks" / "formats.json").read_text()) == {"rte": "attempt"}
    assert not (out / "tasks" / "rte.yaml").exists()  # a registry task: only its format is recorded
    rows = [json.loads(x) for x in (out / "predictions_rte_test.jsonl").read_text().splitlines()]
    assert {r["target"] for r in rows} <= {"0", "1"} and {r["prediction"] for r in rows} <= {"0", "1"}
    assert main(["export-peft", f"prompt={out}", f"output_dir={tmp_path / 'peft'}"]) == 0
    assert json.loads((tmp_path / "peft" / "rte" / "tasks" / "formats.json").read_text()) == {"rte": "attempt"}
    assert main(["evaluate", f"prompt={out}", f"data.data_dir={data}", "data.eval_limit=4"]) == 0
    rows = [json.loads(x) for x in (out / "eval-rte-test" / "predictions_test.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["target"] for r in rows} <= {"0", "1"}
