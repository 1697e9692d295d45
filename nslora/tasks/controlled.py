"""The controlled benchmark: bAbI stories where the right route is known.

A share of the training samples (task.params.fault_share, default 0.25) carries a *presentation fault*: the
facts are all there, but shown in a way a rewrite can undo. Another share (knowledge_share, default 0.25; fault_share
+ knowledge_share at most 1) is *hard but clean*: a story of the next bAbI task (two supporting facts among single-fact
stories: where the object is that someone carries), which only weight updates teach — its right route is
numerical, and a rewrite has nothing to fix. The rest, and every held-out sample, are clean single-fact stories. Each training sample's ground
truth is `meta["kind"]` ("presentation", "knowledge" or None) and `meta["fault"]` (the family's name, or None):
recorded in run.sqlite, scored against the routing decisions (a knowledge sample routed symbolic is a false
positive), and never shown to a policy (only the `oracle` reference arm declares it needs the fault).

    task: {name: controlled, babi_task: 1, params: {fault_share: 0.25, knowledge_share: 0.25,  # 0 by default for task 3
                                                    families: [shuffled, phrasing, distractors, noise, latest_first]}}

A family is a function `(sample, rng) -> Sample` that returns the sample with its question re-presented; your
own is named as 'package.module:function' in `families`. `canonical` (used by the rules strategy) restores
the built-in families from the text alone.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Callable

from nslora.core import plugins
from nslora.core.errors import UserError
from nslora.tasks.babi import _DROP, _GET, _MOVE, OBJECTS, PEOPLE, PLACES, QUESTIONS_PER_STORY, BabiTask, generate_babi, parse_babi
from nslora.tasks.base import Sample

Family = Callable[[Sample, random.Random], Sample]

_FIRSTS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
           "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth")
_TENS = ("twent", "thirt", "fort", "fift", "sixt", "sevent", "eight", "ninet")
_TENS_CARDINAL = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _ordinal(n: int) -> str:
    """1 -> "First", 42 -> "Forty-second" (words, not digits: the meaning guard keeps every number)."""
    if n < 20:
        return _FIRSTS[n - 1].capitalize()
    tens, ones = divmod(n, 10)
    word = f"{_TENS[tens - 2]}ieth" if ones == 0 else f"{_TENS_CARDINAL[tens - 2]}-{_FIRSTS[ones - 1]}"
    return word.capitalize()


ORDINALS = tuple(_ordinal(n) for n in range(1, 100))  # longer stories keep their tail in order, unmarked
# Irrelevant sentences: no person, place, object or number of the stories, so dropping them loses nothing.
DISTRACTORS = ("The weather was mild that day.", "A clock ticked somewhere.", "It was a quiet afternoon.",
               "A neighbour laughed in the distance.", "The radio played an old song.", "The rain tapped on the windows.",
               "A dog barked outside.", "The lights flickered for a moment.", "The lunch was a quiet one.",
               "The wind picked up a little.")
# Unfamiliar ways to ask the three bAbI questions; {x} is the person or object, {y} the place.
PHRASINGS = {
    "where_is": ("In which room can {x} be found at the end?", "At the end of the story, {x} is in which room?",
                 "Which room does {x} end up in?"),
    "where_was": ("Which room held the {x} just before the {y}?", "Before reaching the {y}, the {x} was in which room?"),
}


def _lines(sample: Sample) -> tuple[list[str], str]:
    lines = sample.question.split("\n")
    return lines[:-1], lines[-1]


def _with(sample: Sample, story: list[str], question: str) -> Sample:
    return dataclasses.replace(sample, question="\n".join([*story, question]))


def shuffled(sample: Sample, rng: random.Random) -> Sample:
    """The story's sentences out of order, each marked with when it happened ("Third, Mary moved ...")."""
    story, question = _lines(sample)
    marked = [f"{ORDINALS[i]}, {s}" for i, s in enumerate(story[: len(ORDINALS)])]
    order = list(range(len(marked)))
    while len(order) > 1 and order == sorted(order):
        rng.shuffle(order)
    return _with(sample, [marked[i] for i in order] + story[len(ORDINALS):], question)


def phrasing(sample: Sample, rng: random.Random) -> Sample:
    """The question asked in an unfamiliar way."""
    story, question = _lines(sample)
    m = re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question.strip())
    if m:
        return _with(sample, story, rng.choice(PHRASINGS["where_was"]).format(x=m.group(1), y=m.group(2)))
    m = re.fullmatch(r"Where is (the \w+|\w+)\?", question.strip())
    if m is None:
        return sample
    return _with(sample, story, rng.choice(PHRASINGS["where_is"]).format(x=m.group(1)))


def distractors(sample: Sample, rng: random.Random) -> Sample:
    """The story buried in irrelevant sentences (about one for every two of its own)."""
    story, question = _lines(sample)
    out = []
    for s in story:
        out.append(s)
        if rng.random() < 0.5:
            out.append(rng.choice(DISTRACTORS))
    if len(out) == len(story):
        out.insert(rng.randrange(len(out) + 1), rng.choice(DISTRACTORS))
    return _with(sample, out, question)


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def noise(sample: Sample, rng: random.Random) -> Sample:
    """Noisy text: markup around words, names in lower case, swapped letters (never in the answer's word: the
    story must still state the fact that answers the question)."""
    story, question = _lines(sample)
    keep = sample.answer.lower()

    def garble(sentence: str) -> str:
        words = []
        for w in sentence.split(" "):
            core = w.rstrip(".?")
            tail = w[len(core):]
            r = rng.random()
            if core in PEOPLE:
                core = core.lower() if r < 0.4 else core
            elif core.isalpha():
                core = _typo(core, rng) if r < 0.3 and core.lower() != keep else f"<b>{core}</b>" if r < 0.5 else core
            words.append(core + tail)
        return " ".join(words)

    return _with(sample, [garble(s) for s in story], question)


LATEST_FIRST = "Most recent first:"


def latest_first(sample: Sample, rng: random.Random) -> Sample:
    """The story told backwards under a header that says so. Unlike the others this one misleads: a model trained
    on it learns that the first mention answers, which is wrong on a story told in order (the held-out ones)."""
    story, question = _lines(sample)
    return _with(sample, [LATEST_FIRST, *story[::-1]], question)


FAMILIES: dict[str, Family] = {"shuffled": shuffled, "phrasing": phrasing, "distractors": distractors, "noise": noise,
                               "latest_first": latest_first}


# ------------------------------------------------------------------------------------------------ canonical

_VERBS = sorted({*_MOVE, "went back to", *_GET, *_DROP}, key=len, reverse=True)
_STATEMENT = re.compile(rf"^[A-Z][a-z]+ (?:{'|'.join(map(re.escape, _VERBS))}) the [a-z]+(?: there)?\.$")
_MARK = re.compile(rf"^({'|'.join(sorted(ORDINALS, key=len, reverse=True))}), (.*)$")
_VOCAB = sorted({w for v in _VERBS for w in v.split()} | {"the", "there", *PLACES, *OBJECTS})


def _fix_word(word: str) -> str:
    core = re.sub(r"</?b>", "", word)
    tail = core[len(core.rstrip(".?")):]
    core = core[: len(core) - len(tail)] if tail else core
    if core.capitalize() in PEOPLE:
        return core.capitalize() + tail
    if not core.isalpha():
        return core + tail
    low = core.lower()
    for v in _VOCAB:  # an adjacent swap of an inner letter pair, undone
        if len(v) == len(low) and sorted(v) == sorted(low) and sum(a != b for a, b in zip(v, low)) == 2:
            return v + tail
    return low + tail


def canonical(question: str) -> str:
    """The canonical bAbI presentation of a question, from its text alone: markup, case and swapped letters
    fixed, time-marked or backwards-told sentences put back in order, irrelevant sentences dropped, the question asked plainly.
    A clean question comes back unchanged."""
    lines = [line for line in question.strip().split("\n") if line.strip()]
    story, asked = lines[:-1], lines[-1].strip()
    if story and story[0].strip() == LATEST_FIRST:  # latest_first: back in the order it happened
        story = story[1:][::-1]
    story = [" ".join(_fix_word(w) for w in s.split(" ")) for s in story]
    story = [s[0].upper() + s[1:] if s else s for s in story]
    marked = [_MARK.match(s) for s in story]
    n = sum(m is not None for m in marked)
    if n and all(marked[:n]):  # shuffled: the marked sentences back in order, an unmarked tail after them
        ranked = sorted((ORDINALS.index(m.group(1)), m.group(2)) for m in marked[:n])
        story = [s[0].upper() + s[1:] for _, s in ranked] + story[n:]
    story = [s for s in story if _STATEMENT.match(s)] or story
    return "\n".join([*story, _plain_question(asked)])


def _plain_question(asked: str) -> str:
    for template in PHRASINGS["where_was"]:
        m = re.fullmatch(re.escape(template).replace(r"\{x\}", r"(?P<x>\w+)").replace(r"\{y\}", r"(?P<y>\w+)"), asked)
        if m:
            return f"Where was the {m['x']} before the {m['y']}?"
    for template in PHRASINGS["where_is"]:
        m = re.fullmatch(re.escape(template).replace(r"\{x\}", r"(the \w+|\w+)"), asked)
        if m:
            return f"Where is {m.group(1)}?"
    return asked


# ------------------------------------------------------------------------------------------------ task


class ControlledTask(BabiTask):
    """bAbI (the generator, task.babi_task) with presentation faults planted in a share of the training split."""

    name = "controlled"
    has_ground_truth = True  # metrics.json scores the routing decisions against meta["fault"]

    def __init__(self, fault_share: float = 0.25, families: list[str] | None = None, knowledge_share: float | None = None):
        if not 0.0 <= fault_share <= 1.0:
            raise ValueError(f"task.params.fault_share={fault_share!r} must be in [0, 1]")
        self.explicit_knowledge = knowledge_share is not None
        # A fixed default, not one that shrinks with fault_share: the lora-clean ceiling (fault_share 0) must train
        # on the same knowledge samples as the arms it is compared with.
        knowledge_share = 0.25 if knowledge_share is None else knowledge_share  # babi_task 3: 0, in load()
        if not 0.0 <= knowledge_share <= 1.0 or fault_share + knowledge_share > 1.0:
            raise ValueError(f"task.params.knowledge_share={knowledge_share!r} must be in [0, 1 - fault_share] "
                             f"(fault_share={fault_share!r}); set knowledge_share (0 for none)")
        self.fault_share = fault_share
        self.knowledge_share = knowledge_share
        self.families = list(families) if families is not None else list(FAMILIES)
        if not self.families:
            raise ValueError("task.params.families is empty; name at least one fault family")
        self._family_fns = [(f, plugins.resolve("task.params.families", f, FAMILIES, "a function (sample, rng) -> Sample",
                                                accept=callable)) for f in self.families]

    def load(self, cfg) -> list[Sample]:
        if cfg.path:
            raise UserError("task.name=controlled generates its own stories; leave task.path empty")
        if self.knowledge_share and cfg.babi_task == 3:
            if self.explicit_knowledge:
                raise UserError("task.params.knowledge_share needs a harder bAbI task than task.babi_task; with "
                                "babi_task=3 set knowledge_share: 0")
            self.knowledge_share = 0.0  # the default: no harder task to draw from
        return [dataclasses.replace(s, meta={**s.meta, "fault": None, "kind": None}) for s in super().load(cfg)]

    def prepare(self, train: list[Sample], heldout: list[Sample], cfg) -> tuple[list[Sample], list[Sample]]:
        """Swap a share of the training samples for knowledge samples, fault a share of the others (the families
        taking turns); held-out samples stay clean. Which samples become knowledge samples does not depend on
        fault_share, so the lora-clean ceiling (fault_share 0) trains on the same knowledge samples."""
        n = len(train)
        k_knowledge = round(self.knowledge_share * n)
        knowledge_at = sorted(random.Random(f"ns-lora-knowledge-{cfg.seed}").sample(range(n), k_knowledge))
        out = list(train)
        for i, sample in zip(knowledge_at, self._knowledge(k_knowledge, cfg)):
            out[i] = dataclasses.replace(sample, system=train[i].system)
        rng = random.Random(f"ns-lora-controlled-{cfg.seed}")
        free = [i for i in range(n) if i not in set(knowledge_at)]
        chosen = sorted(rng.sample(free, min(len(free), round(self.fault_share * n))))
        for j, i in enumerate(chosen):
            family, fn = self._family_fns[j % len(self._family_fns)]
            faulted = fn(train[i], random.Random(f"{cfg.seed}-{train[i].id}-{family}"))
            if not isinstance(faulted, Sample):
                raise ValueError(f"fault family {family} must return an nslora.tasks.Sample, got {type(faulted).__name__}")
            out[i] = dataclasses.replace(faulted, id=train[i].id, answer=train[i].answer, target=train[i].target,
                                         meta={**train[i].meta, "fault": family, "kind": "presentation"})
        return out, heldout

    def _knowledge(self, k: int, cfg) -> list[Sample]:
        """k questions of the next bAbI task's generator, each from another story; story j gives its (j mod 5)-th
        question, so their lengths spread like the base task's."""
        if not k:
            return []
        task = cfg.babi_task + 1
        text = generate_babi(task, k, seed=cfg.seed)
        by_story: dict[str, list[Sample]] = {}
        for s in parse_babi(text, task, source=f"generated bAbI task {task} (knowledge samples)"):
            by_story.setdefault(s.id.rsplit("-", 1)[0], []).append(s)
        picked = [qs[j % QUESTIONS_PER_STORY] for j, qs in enumerate(by_story.values())][:k]
        return [dataclasses.replace(s, meta={**s.meta, "fault": None, "kind": "knowledge"}) for s in picked]
