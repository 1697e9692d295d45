"""Flexible extraction follows one rule on every task (tasks.scoring.final_answer): the reply's final committed
answer, none when it offers two candidates or hedges. Each table holds replies written the way chat models
answer (chatty openings, markdown, trailing explanations, the question restated), with the cases issue 22
found marked; each row: reply, gold answer, what extraction gives, whether flexible scoring credits it."""

import pytest

from nslora.tasks.babi import BabiTask
from nslora.tasks.base import Sample
from nslora.tasks.clinifact import ClinifactTask
from nslora.tasks.controlled import ControlledTask
from nslora.tasks.gsm8k import Gsm8kTask
from nslora.tasks.sft import SftTask, find_label


def _sample(gold: str) -> Sample:
    return Sample(id="x", system="", question="q", answer=gold, target=gold)


def _check(task, reply: str, gold: str, extracted: str, correct: bool) -> None:
    assert task.extract(reply) == extracted
    assert task.score(reply, _sample(gold)) is correct


BABI = [
    # issue 22: a movement is scored on where it ends, two places offered on neither
    ("Mary moved from the kitchen to the garden.", "garden", "garden", True),
    ("Mary moved from the kitchen to the garden.", "kitchen", "garden", False),
    ("The kitchen or the garden.", "kitchen", "", False),
    ("She is either in the kitchen or in the garden.", "kitchen", "", False),
    ("bathroom/kitchen", "bathroom", "", False),
    # committed answers, however they are dressed
    ("Mary is in the kitchen.", "kitchen", "kitchen", True),
    ("The kitchen.", "kitchen", "kitchen", True),
    ("**Answer:** bathroom", "bathroom", "bathroom", True),
    ("I think Mary is in the hallway.", "hallway", "hallway", True),
    ("Where is Mary? Mary is in the bedroom.", "bedroom", "bedroom", True),
    ("Sure! Let me trace the story. Sandra went to the kitchen. Where is Mary? In the garden.", "garden", "garden", True),
    ("Based on the story, Mary went to the hallway and then travelled to the office. So Mary is in the office.", "office", "office", True),
    ("The football is in the office. John picked it up there before he went to the kitchen.", "office", "office", True),
    ("Mary is not in the kitchen; she is in the garden.", "garden", "garden", True),
    # a self-correction: the last word counts
    ("The garden. Wait, actually, Mary went back to the kitchen after that, so she is in the kitchen.", "kitchen", "kitchen", True),
    ("Mary is in the garden \u2014 sorry, I mean the kitchen.", "kitchen", "kitchen", True),
    ("Mary is in the garden, or rather the kitchen.", "garden", "kitchen", False),
    # hedges and doubts: no answer
    ("Maybe the garden?", "garden", "", False),
    ("She is probably in the hallway.", "hallway", "", False),
    ("The hallway, I guess.", "hallway", "", False),
    ("The garden. Or maybe the kitchen.", "garden", "", False),
]


@pytest.mark.parametrize("task", [BabiTask(), ControlledTask()], ids=["babi", "controlled"])
@pytest.mark.parametrize("reply, gold, extracted, correct", BABI)
def test_babi_final_committed_answer(task, reply, gold, extracted, correct):
    _check(task, reply, gold, extracted, correct)


GSM8K = [
    # issue 22: a self-correction is scored on the corrected number, a hedged guess on none
    ("The answer is 5. Wait, actually it is 6.", "6", "6", True),
    ("The answer is 5. Wait, actually it is 6.", "5", "6", False),
    ("maybe 12?", "12", "", False),
    # committed answers, however they are dressed
    ("The answer is 6.", "6", "6", True),
    ("I think the answer is 6.", "6", "6", True),
    ("18 dollars", "18", "18", True),
    ("So she has 3 apples left. #### 3", "3", "3", True),
    ("Janet has 16 - 3 - 4 = 9 eggs left. She sells them for 9 * $2 = $18.\n#### 18", "18", "18", True),
    ("**Final Answer:** $\\boxed{42}$", "42", "42", True),
    ("The answer is 18.\n\nExplanation: she sells 9 eggs at $2 each.", "18", "18", True),
    ("How many eggs are left? 16 - 3 - 4 = 9. How much is that? 9 * 2 = 18. She makes $18 a day.", "18", "18", True),
    ("Great question! First, 48 / 2 = 24 clips in May. Then 48 + 24 = 72 clips in total.", "72", "72", True),
    ("It is 6, not 5.", "6", "6", True),
    # a self-correction: the last word counts
    ("She needs 5 more boxes, no wait, 7 more boxes.", "7", "7", True),
    ("The answer is 70. Sorry, I made an arithmetic error: 48 + 24 = 72, so the answer is 72.", "72", "72", True),
    # two numbers offered, hedges, doubts: no answer
    ("It is either 8 or 7, depending on whether Sunday counts.", "7", "", False),
    ("It is 8 apples or 7 apples.", "8", "", False),
    ("The total is probably 12.", "12", "", False),
    ("She pays 3 * 4 = 12 dollars, I guess.", "12", "", False),
    ("The answer is 12. Or maybe 13, if we count the last day.", "12", "", False),
]


@pytest.mark.parametrize("reply, gold, extracted, correct", GSM8K)
def test_gsm8k_final_committed_answer(reply, gold, extracted, correct):
    _check(Gsm8kTask(), reply, gold, extracted, correct)


@pytest.mark.parametrize("reply, gold, extracted, correct", GSM8K)
def test_sft_numbers_follow_the_gsm8k_rule(reply, gold, extracted, correct):
    _check(SftTask(answer="number"), reply, gold, extracted, correct)


CLINIFACT = [
    ("TRUE", "TRUE", "TRUE", True),
    ("**Answer:** FALSE", "FALSE", "FALSE", True),
    ("Based on the abstract, the claim is TRUE. The results show a significant reduction in pain (p<0.01).", "TRUE", "TRUE", True),
    ("I think the answer is NONE: the abstract is about bone density.", "NONE", "NONE", True),
    ("The abstract says nothing about sleep. NONE.", "NONE", "NONE", True),
    ("The claim is not true.", "FALSE", "FALSE", True),
    ("None of the patients improved, so FALSE.", "FALSE", "FALSE", True),
    ("TRUE or FALSE? The abstract supports the claim, so TRUE.", "TRUE", "TRUE", True),
    ("FALSE. Wait, actually the abstract does report a significant effect, so the answer is TRUE.", "TRUE", "TRUE", True),
    ("TRUE, FALSE or NONE", "TRUE", "", False),
    ("TRUE/FALSE", "TRUE", "", False),
    ("It could be TRUE or NONE.", "TRUE", "", False),
    ("Probably TRUE.", "TRUE", "", False),
    ("TRUE. Or maybe NONE, since the outcome is not reported.", "TRUE", "", False),
    ("FALSE? The evidence is inconclusive.", "FALSE", "", False),
]


@pytest.mark.parametrize("reply, gold, extracted, correct", CLINIFACT)
def test_clinifact_final_committed_answer(reply, gold, extracted, correct):
    _check(ClinifactTask(), reply, gold, extracted, correct)


LABELS = [
    ("Yes.", "yes", "yes", True),
    ("No, the drug does not help.", "no", "no", True),
    ("**Answer**: maybe", "maybe", "maybe", True),
    ("Maybe.", "maybe", "maybe", True),  # the label "maybe" is an answer, not a hedge
    ("I think yes.", "yes", "yes", True),
    ("It is not yes: no.", "no", "no", True),
    ("Yes. Wait, actually no: the trial showed no effect.", "no", "no", True),
    ("Yes. Wait, actually no: the trial showed no effect.", "yes", "no", False),
    ("yes, no or maybe", "yes", "", False),
    ("Yes/No", "yes", "", False),
    ("The answer is yes or no, depending on the dose.", "yes", "", False),
    ("Probably yes.", "yes", "", False),
    ("Yes, I guess.", "yes", "", False),
]


@pytest.mark.parametrize("reply, gold, extracted, correct", LABELS)
def test_sft_label_final_committed_answer(reply, gold, extracted, correct):
    task = SftTask(answer="label")
    task.labels = ["maybe", "yes", "no"]
    _check(task, reply, gold, extracted, correct)
    assert find_label(reply, task.labels) == extracted


@pytest.mark.parametrize("task, reply, gold, strict_form", [
    (BabiTask(), "Mary moved from the kitchen to the garden.", "garden", "garden"),
    (Gsm8kTask(), "The answer is 5. Wait, actually it is 6.", "6", "#### 6"),
    (Gsm8kTask(), "maybe 12?", "12", "#### 12"),
    (ClinifactTask(), "Probably TRUE.", "TRUE", "TRUE"),
])
def test_strict_scoring_is_unchanged(task, reply, gold, strict_form):
    """The rule is flexible scoring's; strict scoring still wants the answer alone in the expected form."""
    assert task.score_strict(reply, _sample(gold)) is False
    assert task.score_strict(strict_form, _sample(gold)) is True
