"""The meaning guard with embedding similarity (hand-written cases), and the deterministic rules strategy."""

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402

from rewriter import guard  # noqa: E402
from rewriter.guard import GuardConfig  # noqa: E402
from rewriter.strategies import STRATEGIES, RewriteContext  # noqa: E402
from rewriter.strategies import rules  # noqa: E402
from nslora.tasks.base import Sample  # noqa: E402

BABI = ("Mary moved to the bathroom.\nJohn went to the hallway.\nDaniel went back to the hallway.\n"
        "Sandra moved to the garden.\nJohn moved to the office.\nSandra journeyed to the bathroom.\nWhere is Mary?")
GSM1 = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?")
GSM2 = "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?"

# (original, rewrite, gold, accepted, reason contains): the hand-written cases the threshold was chosen on.
CASES = [
    # faithful paraphrases and layouts
    (GSM1, "In April, Natalia sold clips to 48 of her friends. In May she sold half as many clips as in April. "
           "How many clips did she sell in April and May combined?", "72", True, "ok"),
    (GSM2, "Weng is paid $12 per hour to babysit. Yesterday she babysat for 50 minutes. How much money did she earn?",
     "10", True, "ok"),
    (BABI, BABI.replace("Where is Mary?", "In which room is Mary now?"), "bathroom", True, "ok"),
    (BABI, "Read carefully. " + BABI, "bathroom", True, "ok"),
    # a dropped number
    (GSM2, "Weng earns money for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
     "10", False, "dropped number"),
    # a changed entity
    (BABI, BABI.replace("Where is Mary?", "Where is Sandra?"), "bathroom", False, "asks about Sandra"),
    (GSM1, GSM1.replace("Natalia", "Natasha"), "72", False, "Natalia"),
    # a leaked answer
    (GSM1, GSM1 + " (Hint: it is 72.)", "72", False, "reveals the gold"),
    # the fact that answers a bAbI question dropped
    ("Mary moved to the bathroom.\nJohn went to the hallway.\nWhere is Mary?",
     "Mary moved somewhere. John went to the hallway. Where is Mary?", "bathroom", False, "dropped the fact"),
    # numbers and names kept, meaning gone: only the embedding sees it
    (GSM2, "Weng is 12 years old and has 50 cousins. Which of her cousins does Weng like babysitting most?", "10",
     False, "meaning drifted"),
    (BABI.split("\n")[0] + "\nWhere is Mary?", "Mary loves the bathroom music. Who sings in the bathroom, Mary?",
     "bathroom", False, "meaning drifted"),
    # length bounds
    (GSM1, "Natalia 48 April May?", "72", False, "too short"),
]


@pytest.mark.parametrize("original,new,gold,accepted,why", CASES)
def test_guard_verdicts_with_embedding(original, new, gold, accepted, why):
    verdict = guard.assess(original, new, gold)
    assert verdict.accepted is accepted, verdict
    assert why.lower() in verdict.reason.lower()
    kept = guard.verbatim(original, new)
    assert set(verdict.scores) == {"verbatim" if kept else "similarity", "length_ratio", "numbers_kept", "names_kept", "reveals_answer"}
    if accepted and not kept:
        assert verdict.scores["similarity"] >= guard.DEFAULT_MIN_SIMILARITY


def test_verbatim_layouts_skip_the_embedding_and_everything_else_gets_it(monkeypatch):
    from rewriter.strategies import rules

    story = "Mary moved to the bathroom.\nJohn went to the hallway.\nWhere is Mary?"
    claim = "Claim: Drug X reduces pain.\n\nAbstract: We studied 40 patients. Pain fell.\n\nAnswer TRUE, FALSE or NONE."
    for original, layout in ((story, rules.babi), (GSM1, rules.gsm8k), (claim, rules.clinifact), (GSM2, rules.generic)):
        assert guard.verbatim(original, layout(original)), layout(original)
    assert guard.verbatim(story, "Read carefully.\n" + story)
    layout = rules.babi(story)  # a second round meets the layout itself: numbered lines are still verbatim
    assert guard.verbatim(layout, layout) and guard.verbatim(layout, rules.babi(layout))
    changed = [story.replace("Mary moved", "Mary never moved"),  # a word inside a sentence
               story.replace("Mary moved to the bathroom.", "Mary moved to the bathroom. That is not so."),  # a negation
               story.replace("bathroom.", "bathroom. Then she left."),  # a fact about someone it mentions
               story + "\nSandra went to the garden.",  # an added fact about a place it mentions? a new name, new place
               story.replace("\nWhere", "\nMary went to the garden.\nWhere"),  # an added fact with its names
               story.replace("John went to the hallway.\n", ""),  # a sentence dropped
               "Where is Mary?\n" + story.replace("\nWhere is Mary?", ""),  # reordered
               GSM1 + " She sold 3 more.",  # a number added
               "Natalia sold 48 clips in April and half as many in May. How many in all?"]  # a paraphrase
    assert not any(guard.verbatim(o, n) for o, n in [(story, c) for c in changed[:7]] + [(GSM1, changed[7]), (GSM1, changed[8])])

    # A verbatim rewrite is judged without the model: an embedder that cannot load is never asked.
    class Broken(guard.Embedder):
        def _load(self):
            raise AssertionError("the embedding was computed")

    monkeypatch.setitem(guard._EMBEDDERS, None, Broken())
    verdict = guard.assess(story, rules.babi(story), "bathroom")
    assert verdict.accepted and verdict.scores["verbatim"] is True and "similarity" not in verdict.scores
    with pytest.raises(AssertionError, match="computed"):
        guard.assess(story, story.replace("Mary moved to", "Mary walked into"), "bathroom")


def test_similarity_separates_faithful_from_unfaithful():
    faithful = [guard.similarity(o, n) for o, n, _, ok, _ in CASES if ok]
    drifted = [guard.similarity(o, n) for o, n, _, ok, why in CASES if why == "meaning drifted"]
    assert min(faithful) > 0.85 and max(drifted) < 0.75
    assert guard.similarity("Where is Mary?", "Where is Mary?") == pytest.approx(1.0, abs=1e-4)


def test_guard_is_configurable():
    new = "Weng is 12 years old and has 50 cousins. Which of her cousins does Weng like babysitting most?"
    off = guard.assess(GSM2, new, "10", GuardConfig(similarity=False))
    assert off.accepted and "similarity" not in off.scores
    assert guard.assess(GSM2, new, "10", GuardConfig(enabled=False)).reason == "ok (guard off)"
    assert not guard.assess(GSM2, "  ", "10", GuardConfig(enabled=False)).accepted
    strict = guard.assess(BABI, BABI.replace("Mary moved to the bathroom", "Mary travelled into the bathroom"), "bathroom", GuardConfig(min_similarity=0.999))
    assert not strict.accepted and "similarity" in strict.reason
    # Every sentence kept word for word: no threshold applies, the meaning cannot have drifted.
    assert guard.assess(BABI, "Read carefully. " + BABI, "bathroom", GuardConfig(min_similarity=0.999)).accepted
    with pytest.raises(ValueError, match="min_similarity=2"):
        GuardConfig(min_similarity=2)


def test_names_ignore_fragments_of_alphanumeric_tokens():
    text = "The KEYNOTE-604 trial (NCT04010227) lowered A1c in Boston."
    assert guard._names(text) == {"Boston"} or "Boston" in guard._names(text)
    assert guard.check(text, "In Boston, the KEYNOTE-604 trial (NCT04010227) lowered A1c.", "TRUE")[0]


def test_embedder_is_shared_and_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    assert guard.embedder() is guard.embedder()
    with ThreadPoolExecutor(4) as pool:
        sims = list(pool.map(lambda _: guard.similarity(GSM1, GSM2), range(8)))
    assert max(sims) - min(sims) < 1e-5


def test_concurrent_callers_share_forwards_and_get_their_own_vectors():
    import threading

    pairs = [(f"Mary moved to room {i}. Where is Mary?", f"Story: Mary moved to room {i}.\nQuestion: Where is Mary?")
             for i in range(16)]
    alone = guard.Embedder()
    expected = [alone.similarity(a, b) for a, b in pairs]
    shared, start = guard.Embedder(), threading.Barrier(16)
    shared.encode(["warm up"])
    shared.forwards, got = 0, [None] * 16

    def ask(i):
        start.wait()
        got[i] = shared.similarity(*pairs[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-5 and len(set(round(g, 6) for g in got)) > 1
    assert shared.forwards < 16  # 16 callers, fewer forwards: they were batched


def test_a_failing_batch_fails_every_caller_and_hangs_none(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    broken = guard.Embedder(path=str(tmp_path / "no-model"))
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(broken.similarity, f"a {i}", f"b {i}") for i in range(8)]
        errors = [f.exception(timeout=60) for f in futures]
    assert all(e is not None for e in errors)


# --- rules strategy ------------------------------------------------------------------------------------------


def _run(question, answer, meta=None, task=None):
    s = Sample("s", "Answer.", question, answer, answer, meta or {})
    return STRATEGIES["rules"]().rewrite(s, RewriteContext(None, "Answer.", question, answer, "", task=task))


def test_rules_babi():
    r = _run(BABI, "bathroom", {"task": 1, "story": 0, "supporting": [1]})
    assert r.verdict == "accepted", r.reason
    assert r.calls == 0 and r.tokens == 0
    assert r.new_question.splitlines()[:3] == ["Story:", "1. Mary moved to the bathroom.", "2. John went to the hallway."]
    assert r.new_question.endswith("Question: Where is Mary? Answer with one word: the place.")
    assert r.scores["verbatim"] is True  # every sentence kept: the embedding is not needed
    # Deterministic; a second pass gives the same text, which the guard refuses as unchanged.
    assert _run(BABI, "bathroom").new_question == r.new_question
    again = _run(r.new_question, "bathroom", task="babi")
    assert again.verdict == "rejected" and again.reason == "unchanged"


def test_rules_gsm8k():
    r = _run(GSM2, "10", {"solution": "..."})
    assert r.verdict == "accepted", r.reason
    assert r.new_question == ("Weng earns $12 an hour for babysitting.\nYesterday, she just did 50 minutes of "
                              "babysitting.\nHow much did she earn?\nGive the final answer as a number.")
    assert rules.sentences("It costs $3.50. Then 2 more.") == ["It costs $3.50.", "Then 2 more."]


def test_rules_clinifact():
    from nslora.tasks.clinifact import INSTRUCTION

    q = ("Claim: Drug X lowers A1c in adults with type 2 diabetes.\n\nAbstract: BACKGROUND: In the KEYNOTE-604 trial "
         "(NCT04010227), 120 adults took Drug X. RESULTS: A1c fell by 0.4%.\n\n" + INSTRUCTION)
    r = _run(q, "TRUE", {"claim": "...", "abstract": "..."})
    assert r.verdict == "accepted", r.reason
    assert r.new_question.startswith("CLAIM:\nDrug X lowers A1c") and "\n\nABSTRACT:\nBACKGROUND:" in r.new_question
    assert r.new_question.endswith("TASK:\n" + INSTRUCTION)
    assert rules.detect(Sample("s", "", q, "TRUE", "TRUE"), RewriteContext(None, "", q, "TRUE", "")) == "clinifact"


def test_rules_accepts_real_tasks():
    from nslora.tasks.babi import parse_babi

    path = "/work/shared/data/babi/qa2_two-supporting-facts_train.txt"
    if not __import__("os").path.exists(path):
        pytest.skip("bAbI data not present")
    text = "\n".join(open(path).read().splitlines()[:60])
    samples = parse_babi(text, 2)[:6]
    results = [STRATEGIES["rules"]().rewrite(s, RewriteContext(None, s.system, s.question, s.answer, "")) for s in samples]
    assert [r.verdict for r in results] == ["accepted"] * len(samples), [r.reason for r in results]


def test_a_rewrite_that_echoes_the_critique_is_rejected():
    from rewriter.guard import check

    original = "Mary moved to the bathroom.\nJohn went to the hallway.\nWhere is John?"
    echoed = "Mary moved to the bathroom.\nJohn went to the hallway.\nThe answer is incorrect. Where is John?"
    ok, reason = check(original, echoed, "hallway")
    assert not ok and "talks about the answer" in reason
    assert check(original, "Read carefully. " + original, "hallway") == (True, "ok")
