"""Tasks: the bAbI parser and generator, the three loaders, answer extraction and scoring, the split, bad input."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import types
from collections import defaultdict
from pathlib import Path

import pytest

from router.config import TaskConfig
from nslora.core.errors import UserError
from nslora.tasks import TASKS, load_task
from nslora.tasks.babi import BabiTask, generate_babi, parse_babi
from nslora.tasks.base import Sample
from nslora.tasks.clinifact import ClinifactTask
from nslora.tasks.gsm8k import Gsm8kTask

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BABI_FILES = {
    1: SHARED / "babi" / "qa1_single-supporting-fact_train.txt",
    2: SHARED / "babi" / "qa2_two-supporting-facts_train.txt",
    3: SHARED / "babi" / "qa3_three-supporting-facts_train.txt",
}


# ----------------------------------------------------------------------------------- an independent checker

_MOVE = re.compile(r"(\w+) (?:moved|went|journeyed|travelled|went back) to the (\w+)\.")
_GET = re.compile(r"(\w+) (?:got|took|grabbed|picked up) the (\w+)(?: there)?\.")
_DROP = re.compile(r"(\w+) (?:dropped|left|discarded|put down) the (\w+)(?: there)?\.")


def replay_babi(text: str) -> int:
    """Replays every story from its sentences and asserts each answer and its supporting ids.

    Written apart from the generator, from the sentences alone; it agrees with all 3,000 official questions
    (test_checker_agrees_with_official_files), so the generator is measured against the originals' reading.
    """
    checked = 0
    for raw in text.splitlines():
        line_id, rest = raw.split(" ", 1)
        n = int(line_id)
        if n == 1:
            place, arrived = {}, {}  # person -> place, line of that move
            holder, lying, dropped_from, last = {}, {}, {}, {}  # per object
            trail = defaultdict(list)  # object -> [(place, line of the move that took it there)]
        if "\t" in rest:
            question, answer, support = rest.split("\t")
            question, support = question.strip(), [int(x) for x in support.split()]
            if m := re.fullmatch(r"Where is (\w+)\?", question):
                expected = (place[m[1]], [arrived[m[1]]])
            elif m := re.fullmatch(r"Where is the (\w+)\?", question):
                obj = m[1]
                if obj in holder:
                    expected = (place[holder[obj]], [last[obj], arrived[holder[obj]]])
                else:
                    expected = (lying[obj], [last[obj], dropped_from[obj]])
            else:
                m = re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question)
                assert m, raw
                obj, there = m.groups()
                k = max(i for i, (p, _) in enumerate(trail[obj]) if p == there)
                assert k >= 1, raw
                expected = (trail[obj][k - 1][0], [last[obj], trail[obj][k][1], trail[obj][k - 1][1]])
            assert (answer, support) == expected, raw
            checked += 1
        elif m := _MOVE.fullmatch(rest):
            person, where = m.groups()
            place[person], arrived[person] = where, n
            for obj, who in holder.items():
                if who == person:
                    trail[obj].append((where, n))
        elif m := _GET.fullmatch(rest):
            person, obj = m.groups()
            holder[obj], last[obj] = person, n
            if person in place and (not trail[obj] or trail[obj][-1][0] != place[person]):
                trail[obj].append((place[person], arrived[person]))
        elif m := _DROP.fullmatch(rest):
            person, obj = m.groups()
            assert holder.pop(obj) == person, raw
            lying[obj], dropped_from[obj], last[obj] = place.get(person), arrived.get(person), n
        else:
            raise AssertionError(f"unknown sentence: {raw}")
    return checked


def last_place_of(person: str, story: list[str]) -> str:
    """Task 1 in one line of reasoning: the last place mentioned in a sentence about that person."""
    for sentence in reversed(story):
        if sentence.startswith(person + " "):
            return sentence.rstrip(".").split()[-1]
    raise AssertionError(f"{person} never moved")


def cfg(**kw) -> TaskConfig:
    kw.setdefault("n_train", 8)
    kw.setdefault("n_heldout", 4)
    return TaskConfig(**kw)


# ------------------------------------------------------------------------------------------ bAbI generator

OFFICIAL_LINE = re.compile(r"\d+ [A-Z][a-z]+( [a-z]+)+\.|\d+ Where [a-z]+ [A-Za-z ]+\? \t[a-z]+\t\d+( \d+)*")


@pytest.mark.parametrize("task", [1, 2, 3])
def test_generated_text_is_official_format_and_parses(task):
    text = generate_babi(task, 20, seed=0)
    assert text.endswith("\n")
    for line in text.splitlines():
        assert OFFICIAL_LINE.fullmatch(line), line
    samples = parse_babi(text, task)
    assert len(samples) == 20 * 5
    assert len({s.id for s in samples}) == len(samples)
    assert all(s.id.startswith(f"babi{task}-s") for s in samples)
    assert len(set(s.answer for s in samples)) >= 4  # the answers spread over the places
    if task == 1:  # the originals' rhythm: two moves, a question, five times
        assert [len(story.splitlines()) for story in ("\n" + text).split("\n1 ")[1:]] == [15] * 20


@pytest.mark.parametrize("task", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_generated_answers_follow_the_story(task, seed):
    assert replay_babi(generate_babi(task, 40, seed)) == 200


@pytest.mark.parametrize("seed", [0, 3])
def test_task1_answer_is_the_last_place_mentioned_for_the_person(seed):
    for s in parse_babi(generate_babi(1, 30, seed), 1):
        *story, question = s.question.split("\n")
        person = re.fullmatch(r"Where is (\w+)\?", question)[1]
        assert s.answer == last_place_of(person, story)
        supporting_sentence = story[s.meta["sentence_ids"].index(s.meta["supporting"][0])]
        assert supporting_sentence.startswith(person) and supporting_sentence.endswith(s.answer + ".")


@pytest.mark.parametrize("task", [1, 2, 3])
def test_generator_is_fixed_by_seed_and_grows_by_appending(task):
    assert generate_babi(task, 10, seed=5) == generate_babi(task, 10, seed=5)
    assert generate_babi(task, 10, seed=5) != generate_babi(task, 10, seed=6)
    assert generate_babi(task, 20, seed=5).startswith(generate_babi(task, 10, seed=5))


@pytest.mark.parametrize("task, n", [(4, 1), (0, 1), (1, 0)])
def test_generator_refuses_bad_arguments(task, n):
    with pytest.raises(UserError):
        generate_babi(task, n, seed=0)


# --------------------------------------------------------------------------------------------- bAbI parser

TWO_STORIES = (
    "1 Mary moved to the bathroom.\n"
    "2 John went to the hallway.\n"
    "3 Where is Mary? \tbathroom\t1\n"
    "4 Mary travelled to the office.\n"
    "5 Where is Mary? \toffice\t4\n"
    "1 Sandra journeyed to the garden.\n"
    "2 Where is Sandra? \tgarden\t1\n"
)


def test_parse_babi_builds_one_sample_per_question():
    samples = parse_babi(TWO_STORIES, 1)
    assert [s.id for s in samples] == ["babi1-s0-l3", "babi1-s0-l5", "babi1-s1-l2"]
    # the story so far, one sentence a line, earlier questions left out, then the question
    assert samples[1].question == "Mary moved to the bathroom.\nJohn went to the hallway.\nMary travelled to the office.\nWhere is Mary?"
    assert samples[2].question == "Sandra journeyed to the garden.\nWhere is Sandra?"
    assert [(s.answer, s.target) for s in samples] == [("bathroom", "bathroom"), ("office", "office"), ("garden", "garden")]
    assert samples[1].meta == {"task": 1, "supporting": [4], "story": 0, "sentence_ids": [1, 2, 4]}
    assert samples[2].meta["story"] == 1


def test_parse_babi_accepts_windows_line_ends_and_blank_lines():
    assert parse_babi(TWO_STORIES.replace("\n", "\r\n") + "\n\n", 1) == parse_babi(TWO_STORIES, 1)


@pytest.mark.parametrize(
    "text, says",
    [
        ("Mary moved to the bathroom.\n", "line 1: expected 'ID sentence'"),
        ("2 Mary moved to the bathroom.\n", "line 1: line ID 2 should be 1"),
        ("1 Mary moved to the bathroom.\n3 John went to the office.\n", "line 2: line ID 3 should be 2"),
        ("1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\n", "line 2: a question line needs 3 tab-separated fields"),
        ("1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\tone\n", "line 2: supporting ids must be line IDs"),
        ("1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\t2\n", "line 2: supporting id 2 is not an earlier sentence"),
        ("1 Mary moved to the bathroom.\n2 Where is Mary?\t\t1\n", "line 2: the question and the answer must not be empty"),
        ("1 Where is Mary?\tbathroom\t\n", "line 1: a question before any sentence"),
    ],
)
def test_parse_babi_rejects_malformed_lines(text, says):
    with pytest.raises(UserError, match=re.escape(f"qa1_x.txt {says}")):
        parse_babi(text, 1, source="qa1_x.txt")


def test_babi_task_reads_a_file_and_takes_the_task_from_its_name(tmp_path):
    path = tmp_path / "qa2_custom_train.txt"
    path.write_text(TWO_STORIES)
    samples = BabiTask().load(cfg(name="babi", path=str(path), babi_task=1))
    assert [s.id for s in samples] == ["babi2-s0-l3", "babi2-s0-l5", "babi2-s1-l2"]
    other = tmp_path / "stories.txt"
    other.write_text(TWO_STORIES)
    assert BabiTask().load(cfg(name="babi", path=str(other), babi_task=3))[0].meta["task"] == 3


def test_babi_task_generates_a_fixed_pool_without_a_path():
    small = BabiTask().load(cfg(name="babi", babi_task=2, n_train=10, n_heldout=5))
    assert len(small) == 1000  # like the official 1k sets, whatever n_train is
    assert small == BabiTask().load(cfg(name="babi", babi_task=2, n_train=900, n_heldout=100))
    assert len(BabiTask().load(cfg(name="babi", babi_task=1, n_train=1500, n_heldout=10))) == 2000


@pytest.mark.parametrize(
    "reply, place",
    [
        ("bathroom", "bathroom"),
        ("Bathroom", "bathroom"),
        ("The bathroom.", "bathroom"),
        ("  the kitchen\n", "kitchen"),
        ("In the kitchen.", "kitchen"),
        ("Mary is in the bathroom.", "bathroom"),
        ("The football is in the garden.", "garden"),
        ("It's in the office.", "office"),
        ("Mary went back to the hallway.", "hallway"),
        ("Answer: office", "office"),
        ("The answer is: the garden.", "garden"),
        ("**Kitchen**", "kitchen"),
        ("Office, because Mary moved there.", "office"),
        ("bedroom. John went to the hallway.", "bedroom"),
        ("Where is Mary? Mary is in the bedroom.", "bedroom"),
        ("The football was in the office before the kitchen.", "office"),
        ("1. garden", "garden"),
        # a denied place is not the answer, a speaker label is not one either
        ("Not in the kitchen, she is in the garden.", "garden"),
        ("Mary: garden", "garden"),
        ("She is not in the office.", ""),
        ("", ""),
        ("...", ""),
    ],
)
def test_babi_extract(reply, place):
    assert BabiTask().extract(reply) == place


@pytest.mark.parametrize(
    "reply, correct",
    [("Bathroom.", True), ("She is in the bathroom", True), ("bathrooms", False), ("the hallway", False), ("", False)],
)
def test_babi_score(reply, correct):
    sample = parse_babi(TWO_STORIES, 1)[0]  # answer: bathroom
    assert BabiTask().score(reply, sample) is correct


# ---------------------------------------------------------------------------------------------------- GSM8K

GSM_LINES = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"},
    {"question": "A car costs $500 a day for 2 days. How much?", "answer": "500*2 = <<500*2=1000>>1,000\n#### 1,000"},
    {"question": "What is 3 minus 5?", "answer": "3-5=<<3-5=-2>>-2\n#### -2"},
]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_gsm8k_loads_answers_and_targets(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", GSM_LINES)
    short = Gsm8kTask().load(cfg(name="gsm8k", path=str(path)))
    assert [s.id for s in short] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    assert [(s.answer, s.target) for s in short] == [("72", "72"), ("1000", "1000"), ("-2", "-2")]
    assert short[0].question == GSM_LINES[0]["question"]
    worked = Gsm8kTask().load(cfg(name="gsm8k", path=str(path), target="solution"))
    assert worked[0].target == "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72"
    assert worked[1].target == "500*2 = 1,000\n#### 1000"
    assert all("<<" not in s.target and s.target.endswith(f"#### {s.answer}") for s in worked)


@pytest.mark.parametrize(
    "reply, number",
    [
        ("#### 72", "72"),
        ("She sold 24 in May, so 48 + 24 = 72 in all.\n#### 72", "72"),
        ("The answer is 72.", "72"),
        ("The answer is 72.0", "72"),
        ("It costs $1,000.", "1000"),
        ("#### 1,234,567 dollars, not 5", "1234567"),
        ("1,000 + 234 = 1234", "1234"),
        ("3 - 5 = -2", "-2"),
        ("from 3-5 apples", "5"),
        ("It is 2.50 dollars", "2.5"),
        ("45%", "45"),
        ("#### 18\nThat is 3 more than 15.", "18"),
        ("#### \nI think 7", "7"),
        ("no idea", ""),
        # a hedge gives no answer; a check after the answer is not the answer
        ("either 8 or 7", ""),
        ("It is 8 or 7.", ""),
        ("She had 3 or 4 at first, then 12 in all.\nSo 12.", "12"),
        ("7. Check: 7 = 7 x 1", "7"),
        ("So the total is 72.\nVerification: 72 = 48 + 24", "72"),
        ("Let us check: 48 / 2 = 24, and 48 + 24 = 72.", "72"),
    ],
)
def test_gsm8k_extract(reply, number):
    assert Gsm8kTask().extract(reply) == number


@pytest.mark.parametrize(
    "reply, gold, correct",
    [("#### 72", "72", True), ("72.00", "72", True), ("$1,000", "1000", True), ("-2", "-2", True), ("2", "-2", False), ("73", "72", False), ("", "72", False)],
)
def test_gsm8k_score(reply, gold, correct):
    sample = Sample(id="g", system="", question="q", answer=gold, target=gold)
    assert Gsm8kTask().score(reply, sample) is correct


def test_gsm8k_without_a_path_explains_how_to_work_offline(monkeypatch):
    def fail(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fail))
    with pytest.raises(UserError, match=r"task.path is not set and openai/gsm8k cannot be loaded \(offline\?\); download train.jsonl and set task.path="):
        Gsm8kTask().load(cfg(name="gsm8k"))


def test_gsm8k_from_the_hub_gives_the_same_samples_as_the_file(monkeypatch, tmp_path):
    rows = [dict(r) for r in GSM_LINES]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: rows))
    path = write_jsonl(tmp_path / "train.jsonl", GSM_LINES)
    assert Gsm8kTask().load(cfg(name="gsm8k")) == Gsm8kTask().load(cfg(name="gsm8k", path=str(path)))


# ------------------------------------------------------------------------------------------------ CliniFact

CLINI_HEADER = ["index", "nctId", "claim", "article_abstract", "label", "outcome_type"]
CLINI_ROWS = [
    ["17", "NCT1", "Drug A is superior to placebo in terms of pain", 'Background: "pain", trials.\nResults: A reduced pain, p<0.01.', "1", "PRIMARY"],
    ["4", "NCT2", "Drug B is superior to placebo in terms of sleep", "No significant difference in sleep.", "0", "PRIMARY"],
    ["9", "NCT3", "Drug C is superior to placebo in terms of mood", "A study of bone density.", "2", "PRIMARY"],
]


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_clinifact_loads_claims_abstracts_and_labels(tmp_path):
    path = write_csv(tmp_path / "train_set.csv", CLINI_HEADER, CLINI_ROWS)
    samples = ClinifactTask().load(cfg(name="clinifact", path=str(path)))
    assert [s.id for s in samples] == ["clinifact-17", "clinifact-4", "clinifact-9"]
    assert [s.answer for s in samples] == ["TRUE", "FALSE", "NONE"]
    assert [s.target for s in samples] == ["TRUE", "FALSE", "NONE"]
    q = samples[0].question
    assert q.startswith("Claim: Drug A is superior") and 'Background: "pain", trials.\nResults:' in q
    assert "TRUE" in q and "FALSE" in q and "NONE" in q
    assert samples[0].meta["claim"] == CLINI_ROWS[0][2] and samples[0].meta["label"] == 1


def test_clinifact_without_an_id_column_numbers_the_rows(tmp_path):
    header = ["claim", "article_abstract", "label"]
    path = write_csv(tmp_path / "mine.csv", header, [r[2:5] for r in CLINI_ROWS] + [["", "", ""]])
    assert [s.id for s in ClinifactTask().load(cfg(name="clinifact", path=str(path)))] == ["clinifact-1", "clinifact-2", "clinifact-3"]


def test_clinifact_reads_fields_longer_than_the_csv_default(tmp_path):
    before = csv.field_size_limit()
    path = write_csv(tmp_path / "long.csv", CLINI_HEADER, [["1", "N", "claim", "x" * (before + 10), "2", "P"]])
    assert len(ClinifactTask().load(cfg(name="clinifact", path=str(path)))[0].meta["abstract"]) == before + 10
    assert csv.field_size_limit() == before  # the cap is restored for everyone else


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("TRUE", "TRUE"),
        ("true.", "TRUE"),
        ("Answer: False", "FALSE"),
        ("**NONE**", "NONE"),
        ("The abstract says nothing, so NONE.", "NONE"),
        ("FALSE, not TRUE", "FALSE"),
        ("It is untrue", ""),
        # negation turns a verdict over; "none" in prose is no label; echoing the options is no verdict
        ("The claim is not true.", "FALSE"),
        ("It is not false", "TRUE"),
        ("None of the patients improved, so FALSE.", "FALSE"),
        ("none of the above", ""),
        ("TRUE, FALSE or NONE", ""),
        ("true or false?", ""),
        ("Truely falsely", ""),
        ("", ""),
    ],
)
def test_clinifact_extract(reply, verdict):
    assert ClinifactTask().extract(reply) == verdict


def _gold(answer):
    return Sample(id="x", system="", question="q", answer=answer, target=answer)


@pytest.mark.parametrize("task, reply, gold, strict, flexible", [
    (Gsm8kTask(), "#### 7", "7", True, True),
    (Gsm8kTask(), "The answer is 7.", "7", False, True),  # right, but not in the trained '#### N' form
    (Gsm8kTask(), "either 8 or 7", "7", False, False),
    (Gsm8kTask(), "7. Check: 7 = 7 x 1", "7", False, True),
    (ClinifactTask(), "FALSE", "FALSE", True, True),
    (ClinifactTask(), "Answer: false.", "FALSE", True, True),
    (ClinifactTask(), "The claim is not true.", "FALSE", False, True),
    (ClinifactTask(), "The claim is not true.", "TRUE", False, False),
    (ClinifactTask(), "none of the above", "NONE", False, False),
    (BabiTask(), "garden", "garden", True, True),
    (BabiTask(), "The garden.", "garden", True, True),
    (BabiTask(), "Not in the kitchen, she is in the garden.", "kitchen", False, False),
    (BabiTask(), "Not in the kitchen, she is in the garden.", "garden", False, True),
    (BabiTask(), "Mary: garden", "mary", False, False),
])
def test_strict_and_flexible_scoring(task, reply, gold, strict, flexible):
    assert task.score_strict(reply, _gold(gold)) is strict and task.score(reply, _gold(gold)) is flexible


# ------------------------------------------------------------------------------------- load_task and split


def test_registry_names_every_task():
    from nslora.tasks.controlled import ControlledTask
    from nslora.tasks.sft import SftTask

    assert TASKS == {"babi": BabiTask, "gsm8k": Gsm8kTask, "clinifact": ClinifactTask, "controlled": ControlledTask, "sft": SftTask}


def test_load_task_sets_the_system_prompt():
    task, train, heldout = load_task(cfg(name="babi"))
    assert isinstance(task, BabiTask)
    assert {s.system for s in train + heldout} == {BabiTask.default_system}
    _, train, heldout = load_task(cfg(name="babi", system_prompt="Answer with one word."))
    assert {s.system for s in train + heldout} == {"Answer with one word."}


def test_split_is_disjoint_fixed_by_seed_and_heldout_ignores_n_train():
    _, train, heldout = load_task(cfg(name="babi", n_train=50, n_heldout=20, seed=1))
    assert len(train) == 50 and len(heldout) == 20
    assert not {s.id for s in train} & {s.id for s in heldout}
    _, train2, heldout2 = load_task(cfg(name="babi", n_train=50, n_heldout=20, seed=1))
    assert (train2, heldout2) == (train, heldout)
    _, _, heldout3 = load_task(cfg(name="babi", n_train=300, n_heldout=20, seed=1))
    assert heldout3 == heldout
    _, _, heldout4 = load_task(cfg(name="babi", n_train=50, n_heldout=20, seed=2))
    assert heldout4 != heldout


def test_load_task_refuses_too_few_samples(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", GSM_LINES)
    with pytest.raises(UserError, match=r"has 3 samples but task.n_train=8 \+ task.n_heldout=4 = 12; lower task.n_train or task.n_heldout"):
        load_task(cfg(name="gsm8k", path=str(path)))


def test_load_task_refuses_duplicate_ids(tmp_path):
    path = write_csv(tmp_path / "dup.csv", CLINI_HEADER, [CLINI_ROWS[0], CLINI_ROWS[1], CLINI_ROWS[0]])
    with pytest.raises(UserError, match=r"sample id 'clinifact-17' occurs twice in .*dup.csv"):
        load_task(cfg(name="clinifact", path=str(path), n_train=1, n_heldout=1))


def test_gold_targets_score_as_correct(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", GSM_LINES)
    cases = [
        (BabiTask(), BabiTask().load(cfg(name="babi", babi_task=3))[:50]),
        (Gsm8kTask(), Gsm8kTask().load(cfg(name="gsm8k", path=str(path), target="solution"))),
        (ClinifactTask(), ClinifactTask().load(cfg(name="clinifact", path=str(write_csv(tmp_path / "c.csv", CLINI_HEADER, CLINI_ROWS))))),
    ]
    for task, samples in cases:
        assert all(task.score(s.target, s) for s in samples), task.name


# ------------------------------------------------------------------------------------------------ bad input

_GOOD_GSM = json.dumps(GSM_LINES[0]) + "\n"
BAD_INPUT = [
    ("babi", "qa1_missing.txt", None, "does not exist; set task.path to a bAbI text file"),
    ("gsm8k", "missing.jsonl", None, "does not exist; set task.path to a GSM8K JSONL file"),
    ("clinifact", "missing.csv", None, "does not exist; set task.path to a CliniFact CSV file"),
    ("babi", "qa1_latin1.txt", "1 Mary moved to the caf\xe9.\n".encode("latin-1"), "line 1: invalid UTF-8"),
    ("gsm8k", "latin1.jsonl", _GOOD_GSM.encode() + b'{"question": "caf\xe9"}\n', "line 2: invalid UTF-8"),
    ("clinifact", "latin1.csv", b"claim,article_abstract,label\ncaf\xe9,x,1\n", "line 2: invalid UTF-8"),
    ("babi", "qa1_empty.txt", b"", "holds no questions"),
    ("babi", "qa1_bad.txt", b"1 Mary moved to the bathroom.\nWhere is Mary?\tbathroom\t1\n", "line 2: expected 'ID sentence'"),
    ("gsm8k", "empty.jsonl", b"\n", "holds no problems"),
    ("gsm8k", "broken.jsonl", _GOOD_GSM.encode() + b'{"question": "x", \n', "line 2: invalid JSON"),
    ("gsm8k", "keys.jsonl", b'{"problem": "x", "solution": "#### 1"}\n', "line 1: missing key(s) question, answer; each line needs keys question, answer"),
    ("gsm8k", "list.jsonl", b"[1, 2]\n", "line 1: expected a JSON object"),
    ("gsm8k", "hashes.jsonl", b'{"question": "x", "answer": "it is 4"}\n', "line 1: the answer does not end in '#### <number>'"),
    ("gsm8k", "nothing.jsonl", b'{"question": "x", "answer": "it is 4\\n#### "}\n', "line 1: nothing after '#### '"),
    ("clinifact", "empty.csv", b"", "is empty"),
    ("clinifact", "header.csv", b"claim,article_abstract,label\n", "has a header but no rows"),
    ("clinifact", "cols.csv", b"claim,abstract,verdict\na,b,1\n", "missing column(s) article_abstract, label; expected columns claim, article_abstract, label"),
    ("clinifact", "label.csv", b"claim,article_abstract,label\na,b,1\nc,d,5\n", "row 2: label '5' is not 0, 1 or 2"),
    ("clinifact", "short.csv", b"claim,article_abstract,label\na,b\n", "row 1: 2 fields but the header has 3"),
]


@pytest.mark.parametrize("name, filename, content, says", BAD_INPUT, ids=[c[1] for c in BAD_INPUT])
def test_bad_input_is_one_line_naming_the_file(tmp_path, name, filename, content, says):
    path = tmp_path / filename
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_task(cfg(name=name, path=str(path), n_train=1, n_heldout=1))
    message = str(err.value)
    assert str(path) in message and says in message, message
    assert "\n" not in message


def test_clinifact_needs_a_path():
    with pytest.raises(UserError, match="task.path is not set; clinifact needs a CliniFact CSV file"):
        load_task(cfg(name="clinifact"))


# ------------------------------------------------------------------------------------ the shared data files


@pytest.mark.parametrize("task", [1, 2, 3])
def test_checker_agrees_with_official_babi_files(task):
    path = BABI_FILES[task]
    if not path.exists():
        pytest.skip(f"{path} is not here")
    assert replay_babi(path.read_text()) == 1000


@pytest.mark.parametrize(
    "name, relpath",
    [
        ("babi", "babi/qa1_single-supporting-fact_train.txt"),
        ("babi", "babi/qa3_three-supporting-facts_train.txt"),
        ("gsm8k", "gsm8k/train.jsonl"),
        ("clinifact", "clinifact/train_set.csv"),
        ("clinifact", "clinifact/validation_set.csv"),
    ],
)
def test_loads_shared_data(name, relpath):
    path = SHARED / relpath
    if not path.exists():
        pytest.skip(f"{path} is not here")
    task, train, heldout = load_task(cfg(name=name, path=str(path), n_train=80, n_heldout=20, target="solution"))
    assert len(train) == 80 and len(heldout) == 20
    assert all(s.question and s.answer and s.target for s in train + heldout)
    assert all(task.score(s.target, s) for s in train + heldout)


def test_tasks_package_does_not_import_torch():
    code = "import sys, nslora.tasks; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
