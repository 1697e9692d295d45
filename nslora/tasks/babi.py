"""bAbI tasks 1-3: the parser of the official text format and this project's own story generator.

The format, one story after another:
    1 Mary moved to the bathroom.
    2 John went to the hallway.
    3 Where is Mary? <TAB>bathroom<TAB>1
Line ID 1 starts a new story; a question line carries the answer and the IDs of the sentences that prove it.
The generator writes the same format, so the embedded default and the official files go through one parser.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

from nslora.core.errors import UserError
from nslora.tasks.base import Sample, Task
from nslora.tasks.files import read_text, shorten
from nslora.tasks.scoring import Candidate, final_answer

DEFAULT_SYSTEM = "Read the story and answer the question with a single word: the name of the place."

# --------------------------------------------------------------------------------------------------- parser

_LINE = re.compile(r"(\d+) (.*)")
_FORMAT = "'ID sentence' or 'ID question<TAB>answer<TAB>supporting ids'"


def parse_babi(text: str, task: int, source: str = "bAbI text") -> list[Sample]:
    """One Sample per question line; its question is the story's sentences so far, then the question.

    Earlier questions of the story are not repeated in later samples: they are not facts.
    `source` names the file in error messages.
    """
    samples: list[Sample] = []
    story = -1
    sentences: list[tuple[int, str]] = []
    prev_id = 0
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # a trailing blank line is common after hand edits; it carries nothing
        m = _LINE.fullmatch(line)
        if m is None:
            raise UserError(f"{source} line {n}: expected {_FORMAT}, got {shorten(line)}")
        line_id, rest = int(m.group(1)), m.group(2)
        if line_id == 1:
            story += 1
            sentences = []
        elif line_id != prev_id + 1:
            # IDs count up by one inside a story; a gap means lines were lost or two files were glued badly.
            raise UserError(f"{source} line {n}: line ID {line_id} should be {prev_id + 1} (or 1 to start a new story)")
        prev_id = line_id

        if "\t" not in rest:
            if not rest.strip():
                raise UserError(f"{source} line {n}: empty sentence; expected {_FORMAT}")
            sentences.append((line_id, rest.strip()))
            continue

        parts = rest.split("\t")
        if len(parts) != 3:
            raise UserError(f"{source} line {n}: a question line needs 3 tab-separated fields (question, answer, supporting ids), got {len(parts)}")
        question, answer, support_text = (p.strip() for p in parts)
        if not question or not answer:
            raise UserError(f"{source} line {n}: the question and the answer must not be empty; expected {_FORMAT}")
        try:
            supporting = [int(x) for x in support_text.split()]
        except ValueError:
            raise UserError(f"{source} line {n}: supporting ids must be line IDs separated by spaces, got {shorten(support_text)}") from None
        known = {i for i, _ in sentences}
        for i in supporting:
            if i not in known:
                raise UserError(f"{source} line {n}: supporting id {i} is not an earlier sentence of this story")
        if not sentences:
            raise UserError(f"{source} line {n}: a question before any sentence of its story; expected {_FORMAT}")
        samples.append(
            Sample(
                id=f"babi{task}-s{story}-l{line_id}",
                system=DEFAULT_SYSTEM,
                question="\n".join(s for _, s in sentences) + "\n" + question,
                answer=answer,
                target=answer,
                # sentence_ids maps the question's story lines back to line IDs, so `supporting` can be
                # resolved to sentences (a rules rewriter may want to reorder or trim the story).
                meta={"task": task, "supporting": supporting, "story": story, "sentence_ids": [i for i, _ in sentences]},
            )
        )
    return samples


# ------------------------------------------------------------------------------------------------ generator

PEOPLE = ("Mary", "John", "Sandra", "Daniel")
PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("football", "apple", "milk")
_MOVE = ("moved to", "went to", "journeyed to", "travelled to")
_GET = ("got", "took", "grabbed", "picked up")
_DROP = ("dropped", "left", "discarded", "put down")
QUESTIONS_PER_STORY = 5
# Chance to ask after each pair of sentences when a question can be answered; tuned so story lengths come out
# near the originals (task 1: 15 lines; task 2: ~25; task 3: ~50).
_ASK = {1: 1.0, 2: 0.5, 3: 0.25}


class _World:
    """What the story has said so far: enough to answer each question and name the lines that prove it.

    Nobody picks anything up before the story has placed them, so every object's place is known from its
    first pick-up on (the originals allow unplaced pick-ups; leaving them out keeps the bookkeeping exact).
    """

    def __init__(self) -> None:
        self.place: dict[str, str] = {}  # person -> current place
        self.arrived: dict[str, int] = {}  # person -> line ID of the move that put them there
        self.visited: dict[str, set[str]] = {p: set() for p in PEOPLE}
        self.holder: dict[str, str] = {}  # object -> person carrying it
        self.lying: dict[str, str] = {}  # object -> place where it was put down
        self.drop_support: dict[str, int] = {}  # object -> arrival line of whoever put it down
        self.last_event: dict[str, int] = {}  # object -> line ID of its latest pick-up or drop
        # object -> the places it has been, each with the move line that took it (or its carrier) there
        self.trail: dict[str, list[tuple[str, int]]] = {o: [] for o in OBJECTS}


def _move(rng: random.Random, w: _World, n: int) -> str:
    person = rng.choice(PEOPLE)
    place = rng.choice([p for p in PLACES if p != w.place.get(person)])
    # "went back to" reads wrong for a first visit, so it is kept for places the person has seen.
    verb = "went back to" if place in w.visited[person] and rng.random() < 0.4 else rng.choice(_MOVE)
    w.place[person], w.arrived[person] = place, n
    w.visited[person].add(place)
    for obj in OBJECTS:
        if w.holder.get(obj) == person:
            w.trail[obj].append((place, n))
    return f"{person} {verb} the {place}."


def _there(rng: random.Random) -> str:
    return " there" if rng.random() < 0.3 else ""


def _statement(rng: random.Random, w: _World, n: int) -> str:
    """A move, a pick-up or a drop (tasks 2 and 3); most are moves, as in the originals."""
    drops = [(w.holder[o], o) for o in OBJECTS if o in w.holder]
    # An object can be taken where it lies, or anywhere before the story has placed it.
    picks = [(p, o) for p in PEOPLE if p in w.place for o in OBJECTS if o not in w.holder and w.lying.get(o, w.place[p]) == w.place[p]]
    r = rng.random()
    if drops and r < 0.2:
        person, obj = rng.choice(drops)
        del w.holder[obj]
        w.lying[obj], w.drop_support[obj], w.last_event[obj] = w.place[person], w.arrived[person], n
        return f"{person} {rng.choice(_DROP)} the {obj}{_there(rng)}."
    if picks and r < 0.4:
        person, obj = rng.choice(picks)
        place = w.place[person]
        w.holder[obj], w.last_event[obj] = person, n
        w.lying.pop(obj, None)
        if not w.trail[obj] or w.trail[obj][-1][0] != place:
            w.trail[obj].append((place, w.arrived[person]))
        return f"{person} {rng.choice(_GET)} the {obj}{_there(rng)}."
    return _move(rng, w, n)


def _question(rng: random.Random, w: _World, task: int) -> tuple[str, str, list[int]] | None:
    """(question, answer, supporting line IDs), or None when nothing can be asked yet."""
    if task == 1:
        people = [p for p in PEOPLE if p in w.place]
        if not people:
            return None
        person = rng.choice(people)
        return f"Where is {person}?", w.place[person], [w.arrived[person]]
    if task == 2:
        objs = [o for o in OBJECTS if o in w.last_event]
        if not objs:
            return None
        obj = rng.choice(objs)
        if obj in w.holder:  # where its carrier is: the pick-up (or drop) plus the carrier's last move
            person = w.holder[obj]
            return f"Where is the {obj}?", w.place[person], [w.last_event[obj], w.arrived[person]]
        return f"Where is the {obj}?", w.lying[obj], [w.last_event[obj], w.drop_support[obj]]
    objs = [o for o in OBJECTS if len(w.trail[o]) >= 2]
    if not objs:
        return None
    obj = rng.choice(objs)
    trail = w.trail[obj]
    # Most questions in the originals ask about the object's latest place; some about an earlier one.
    k = len(trail) - 1 if rng.random() < 0.8 else rng.randrange(1, len(trail))
    place = trail[k][0]
    # A place can recur in the trail; "before the kitchen" then means before its latest visit (as in the
    # originals: all 1,000 questions of qa3 train follow this reading).
    k = max(i for i, (p, _) in enumerate(trail) if p == place)
    return f"Where was the {obj} before the {place}?", trail[k - 1][0], [w.last_event[obj], trail[k][1], trail[k - 1][1]]


def _story(rng: random.Random, task: int) -> list[str]:
    w = _World()
    lines: list[str] = []
    asked = 0
    while asked < QUESTIONS_PER_STORY:
        for _ in range(2):
            n = len(lines) + 1
            lines.append(f"{n} {_move(rng, w, n) if task == 1 else _statement(rng, w, n)}")
        q = _question(rng, w, task) if rng.random() < _ASK[task] else None
        if q is not None:
            text, answer, support = q
            # The space before the tab is in the original files too.
            lines.append(f"{len(lines) + 1} {text} \t{answer}\t{' '.join(map(str, support))}")
            asked += 1
    return lines


def generate_babi(task: int, n_stories: int, seed: int) -> str:
    """`n_stories` stories of bAbI task 1, 2 or 3 in the official text format, the same for the same seed.

    Stories are drawn one after another from one stream, so more stories extend, never change, fewer.
    """
    if task not in (1, 2, 3):
        raise UserError(f"task.babi_task={task!r}: the generator writes tasks 1, 2 and 3 only")
    if n_stories < 1:
        raise UserError(f"bAbI generator: n_stories={n_stories!r} must be >= 1")
    # A string seed hashes the same in every process (unlike hash()), so files are reproducible.
    rng = random.Random(f"ns-lora-babi-{task}-{seed}")
    return "\n".join(line for _ in range(n_stories) for line in _story(rng, task)) + "\n"


# ----------------------------------------------------------------------------------------------------- task

# The generated pool is a fixed 1,000 questions (like the official 1k sets) unless more are needed: a pool
# sized to n_train + n_heldout would reshuffle the held-out set whenever n_train changed.
POOL_STORIES = 200

# Words small chat models put around the place: "The answer is: the bathroom.", "It's in the garden".
_FILLER = {"a", "an", "the", "in", "at", "to", "into", "inside", "is", "it", "its", "s", "was", "answer", "final", "place", "location", "located"}
_PLACE_PHRASE = re.compile(r"\b(?:in|at|to|into|inside) the ([a-z]+)")
_PLACE_WORD = re.compile(rf"\b({'|'.join(PLACES)})\b")
_DENIED = re.compile(r"\b(?:not|isn't|wasn't|never|no longer)\s+(?:\w+\s+){0,2}$")  # "not in the ", "isn't in "
# Where someone came from, or the place a task-3 question measures from, is not where they are.
_ORIGIN = re.compile(r"\b(?:from|before|after|leaving|left|out of)\s+(?:the\s+)?$")
_SPEAKER = re.compile(r"^\s*[a-z]+\s*:\s*")  # "Mary: garden"
_WORD = re.compile(r"[a-z]+")


def _places(sentence: str) -> list[Candidate]:
    low = sentence.lower()
    return [Candidate(m.group(1), m.start(), m.end()) for m in _PLACE_WORD.finditer(low)
            if not _DENIED.search(low[: m.start()]) and not _ORIGIN.search(low[: m.start()])]


def _answer_word(sentence: str) -> list[Candidate]:
    """For a reply that names none of the generator's places: the first word past the filler, or the place of
    "in the X"; with "or Y" after it, Y too (an offer)."""
    low = sentence.lower()
    speaker = _SPEAKER.match(low)
    words = list(_WORD.finditer(low, speaker.end() if speaker else 0))
    while words and words[0].group() in _FILLER:
        words.pop(0)
    if not words:
        return []
    rest = low[words[0].start():]
    phrase = _PLACE_PHRASE.search(rest) if len(words) > 1 else None
    if phrase and not _DENIED.search(rest[: phrase.start()]):
        at = words[0].start() + phrase.start(1)
        return [Candidate(phrase.group(1), at, at + len(phrase.group(1)))]
    first = Candidate(words[0].group(), words[0].start(), words[0].end())
    other = re.match(r"\s*(?:,\s*)?or\s+(?:the\s+)?([a-z]+)", low[first.end:])
    return [first] + ([Candidate(other.group(1), first.end + other.start(1), first.end + other.end(1))] if other else [])


class BabiTask(Task):
    name = "babi"
    default_system = DEFAULT_SYSTEM

    def load(self, cfg) -> list[Sample]:
        if cfg.path:
            source = str(cfg.path)
            text = read_text(cfg.path, "a bAbI text file, e.g. qa1_single-supporting-fact_train.txt")
            # The official names say the task (qa2_two-supporting-facts_train.txt); trust them over the config.
            m = re.match(r"qa(\d+)_", Path(cfg.path).name)
            task = int(m.group(1)) if m else cfg.babi_task
        else:
            task = cfg.babi_task
            need = cfg.n_train + cfg.n_heldout
            n_stories = POOL_STORIES * math.ceil(need / (QUESTIONS_PER_STORY * POOL_STORIES))
            source = f"generated bAbI task {task} (seed {cfg.seed})"
            text = generate_babi(task, n_stories, cfg.seed)
        samples = parse_babi(text, task, source=source)
        if not samples:
            raise UserError(f"{source} holds no questions; a bAbI file needs lines {_FORMAT}")
        return samples

    def extract(self, text: str) -> str:
        """The place the reply finally commits to (the rule in tasks.scoring.final_answer): "Mary is in the
        bathroom." gives bathroom; a denied place or one left is skipped ("Not in the kitchen, she is in the
        garden.", "from the kitchen to the garden" give garden); "the kitchen or the garden" and "maybe the garden"
        give none. A reply naming none of the six places gives its first word past the filler."""
        return final_answer(text, _places if _PLACE_WORD.search(text.lower()) else _answer_word)

    def extract_strict(self, text: str) -> str:
        """One word (a leading "the" and a final full stop allowed), else none."""
        m = re.fullmatch(r"\s*(?:the\s+)?([a-z]+)\s*\.?\s*", text.lower())
        return m.group(1) if m else ""
