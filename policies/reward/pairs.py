"""Preference pairs from finished runs: which training samples needed the symbolic branch, ranked against ones
that did not.

Construction (one run.sqlite per run dir, `split='train'` samples only — held-out samples are never read):

- `c1`: a sample's criterion is its C1 (loss-change ratio), read at every epoch that has one (not only the last:
  a run whose training fixed nearly everything still says, at its earlier epochs, which samples were stuck). At
  each epoch the *high* group is the still-misclassified samples in the top `high_share` (default half) of C1
  (least progress: the weights are not fixing them); the *low* group is every other usable sample; pairs match
  a high and a low sample of the same epoch. Rows of a rewritten prompt are left out (their text is not the
  sample's). margin = C1(chosen) - C1(rejected), floored at 0.
- `c2`: as c1 with criterion = -C2 (a small LoRA gradient norm on a still-wrong sample means the weights
  barely move for it). margin = C2(rejected) - C2(chosen), floored at 0.
- `rewrite`: chosen = samples whose rewrite was accepted and whose loss fell the epoch after; rejected =
  samples correctly classified in their last epoch. margin = the relative loss drop of the chosen sample.
- any other recorded signal, as c1 with criterion = its value (`-NAME`: minus its value, so low counts as high):
  per epoch `loss`, `p_gold`, `margin`, `el2n`; the dynamics over the epochs so far (`confidence`, `variability`,
  `correct_share`, `forgetting`, `aum`); the base model's reading of the original prompt (`q_nll`, `q_top`,
  `a_loss`, `a_alone`, `ifd`, and `presentation`, the planted-copy detector's score). E.g. `-confidence` pairs
  the hard-to-learn samples against the rest; `presentation` teaches the classifier the detector's judgement from
  the text alone.

Samples (keyed by their text, so one text seen in several runs is one unit) are split train/test *before*
pairing, so no sample appears in both splits' pairs.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from nslora.core.errors import UserError

Criterion = str  # c1, c2, rewrite, or a recorded signal's name (policies.quality), optionally with a leading '-'
CRITERIA = ("c1", "c2", "rewrite")


def signal_names() -> tuple[str, ...]:
    from policies.quality import DYNAMICS, INPUTS, SIGNALS

    return tuple(n for n in (*SIGNALS, *DYNAMICS, *INPUTS) if n not in ("c1", "c2"))


def check_criterion(criterion: str) -> str:
    if criterion in CRITERIA or criterion.lstrip("-") in signal_names():
        return criterion
    raise UserError(f"criterion={criterion!r} is not one of {', '.join(CRITERIA)} or a recorded signal "
                    f"({', '.join(signal_names())}; a leading '-' ranks low values high)")


def _value(criterion: str, row: dict, history: list[dict], inputs: dict | None) -> float | None:
    """The criterion's value for one signals row (higher = more in need of the symbolic branch)."""
    if criterion in ("c1", "c2"):
        raw = row[criterion]
        return None if raw is None else (float(raw) if criterion == "c1" else -float(raw))
    sign, name = (-1.0, criterion[1:]) if criterion.startswith("-") else (1.0, criterion)
    from policies.quality import DYNAMICS, INPUTS

    if name in DYNAMICS:
        from adapters.signals import dynamics

        raw = dynamics(history)[name]
    elif name in INPUTS:
        raw = (inputs or {}).get(name)
    else:
        raw = row.get(name)
    return None if raw is None else sign * float(raw)
MIN_PER_GROUP = 2  # one of each group on each side of the train/test split


@dataclass(frozen=True)
class Item:
    """One usable training sample: its text, which group it falls in, and its criterion value."""

    text: str
    high: bool
    value: float
    sample_id: str
    run: str
    epoch: int = 0  # pairs match items of the same run and epoch (0: one group, as for `rewrite`)


def sample_text(system: str, question: str) -> str:
    return f"{system}\n\n{question}" if system else question


def _read(run_dir: Path) -> tuple[dict[str, dict], dict[str, list[dict]], list[dict]]:
    """samples (train split only), signals per sample by epoch, and accepted rewrites of one run."""
    db_path = run_dir / "run.sqlite"
    if not db_path.is_file():
        raise UserError(f"{run_dir}: no run.sqlite; pass the directory of a finished run (runs/<name>)")
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        samples = {r["id"]: dict(r) for r in db.execute("SELECT id, system, question FROM samples WHERE split='train'")}
        signals: dict[str, list[dict]] = {}
        # The join on samples keeps held-out ids out even if a signal row were ever written for one.
        for r in db.execute("SELECT s.* FROM signals s JOIN samples m ON m.id = s.sample_id "
                            "WHERE m.split='train' ORDER BY s.epoch"):
            signals.setdefault(r["sample_id"], []).append(dict(r))
        rewrites = [dict(r) for r in db.execute("SELECT w.epoch, w.sample_id FROM rewrites w JOIN samples m "
                                                "ON m.id = w.sample_id WHERE m.split='train' AND w.verdict='accepted'")]
    except sqlite3.DatabaseError as e:
        raise UserError(f"{db_path}: not a readable run store ({e}); pass the directory of a finished run") from None
    finally:
        db.close()
    return samples, signals, rewrites


def signal_items(samples: dict, signals: dict, criterion: Criterion, run: str, high_share: float = 0.5,
                 inputs: dict[str, dict] | None = None) -> list[Item]:
    """Signal-criterion groups at every epoch: one item per sample and epoch (pure: no I/O). `inputs`: sample id ->
    its original prompt's input signals (for those criteria)."""
    by_epoch: dict[int, list[tuple[str, float, bool]]] = {}
    for sid, hist in signals.items():
        for k, row in enumerate(hist):
            if sid not in samples or row.get("prompt_version", 0) != 0:
                continue
            value = _value(criterion, row, hist[: k + 1], (inputs or {}).get(sid))
            if value is not None:
                by_epoch.setdefault(row["epoch"], []).append((sid, value, bool(row["correct"])))
    items = []
    for epoch, rows in sorted(by_epoch.items()):
        wrong = sorted((v for _, v, ok in rows if not ok), reverse=True)
        # The top high_share of the misclassified samples by criterion: "least progress" is relative to the epoch.
        k = max(1, round(len(wrong) * high_share)) if wrong else 0
        cut = wrong[k - 1] if k else np.inf
        items += [Item(sample_text(samples[s]["system"], samples[s]["question"]), (not ok) and v >= cut, v, s, run, epoch)
                  for s, v, ok in sorted(rows)]
    return items


def rewrite_items(samples: dict, signals: dict, rewrites: list[dict], run: str) -> list[Item]:
    """chosen = accepted rewrite followed by a loss drop; rejected = correct in the last epoch (pure)."""
    items, fixed = [], set()
    for w in sorted(rewrites, key=lambda w: (w["sample_id"], w["epoch"])):
        losses = {r["epoch"]: r["loss"] for r in signals.get(w["sample_id"], [])}
        before, after = losses.get(w["epoch"]), losses.get(w["epoch"] + 1)
        if w["sample_id"] in fixed or before is None or after is None or not after < before:
            continue
        s = samples[w["sample_id"]]
        fixed.add(w["sample_id"])
        items.append(Item(sample_text(s["system"], s["question"]), True, (before - after) / max(abs(before), 1e-8), w["sample_id"], run))
    for sid, hist in sorted(signals.items()):
        if sid not in fixed and sid in samples and hist[-1]["correct"]:
            s = samples[sid]
            items.append(Item(sample_text(s["system"], s["question"]), False, 0.0, sid, run))
    return items


def _inputs(run_dir: Path, criterion: str) -> dict[str, dict] | None:
    """The original prompts' input signals of a run (with the planted-copy detector's score), for input criteria."""
    from policies.quality import INPUTS

    if criterion.lstrip("-") not in INPUTS:
        return None
    from policies.planted import score_originals

    db = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        original = {r["sample_id"]: dict(r) for r in db.execute("SELECT * FROM inputs WHERE since = 0")}
        planted = [dict(r) for r in db.execute("SELECT * FROM planted")]
    except sqlite3.OperationalError:  # a run from before input signals: no such table
        original, planted = {}, []
    finally:
        db.close()
    if not original:
        raise UserError(f"{run_dir}: no input signals recorded (signals.inputs was off, or an older run); pick another criterion")
    return score_originals(original, planted)


def split_units(texts: list[str], heldout_share: float, rng: np.random.Generator) -> set[str]:
    """The held-out texts: a share of the given ones, at least one, never all."""
    order = sorted(set(texts))
    rng.shuffle(order)
    k = min(len(order) - 1, max(1, round(len(order) * heldout_share)))
    return set(order[:k])


def make_pairs(high: list[Item], low: list[Item], criterion: Criterion, n: int, rng: np.random.Generator) -> list[dict]:
    """Up to n random (high, low) pairs without repeats; drawn by index so no full cross product is built."""
    total = len(high) * len(low)
    if total == 0 or n <= 0:
        return []
    picks = rng.choice(total, size=min(n, total), replace=False)
    out = []
    for k in sorted(picks.tolist()):
        c, r = high[k // len(low)], low[k % len(low)]
        margin = c.value if criterion == "rewrite" else max(c.value - r.value, 0.0)
        out.append({"chosen": c.text, "rejected": r.text, "margin": float(margin)})
    return out


def _pairs_within_groups(items: list[Item], criterion: Criterion, n: int, rng: np.random.Generator) -> list[dict]:
    """Up to n pairs, each a high and a low item of the same run and epoch, spread over the groups by their size."""
    groups: dict[tuple[str, int], tuple[list[Item], list[Item]]] = {}
    for i in items:
        groups.setdefault((i.run, i.epoch), ([], []))[0 if i.high else 1].append(i)
    sizes = {g: len(h) * len(lo) for g, (h, lo) in groups.items()}
    total = sum(sizes.values())
    out = []
    for g in sorted(groups):
        if sizes[g]:
            out += make_pairs(*groups[g], criterion, max(1, round(n * sizes[g] / total)), rng)
    return out[:n] if len(out) > n else out


def build_pairs(run_dirs, criterion: Criterion = "c1", max_pairs: int = 2000, seed: int = 0, heldout_share: float = 0.2,
                high_share: float = 0.5):
    """Preference pairs from finished runs -> DatasetDict{'train','test'} of {chosen, rejected, margin}.

    high_share (c1/c2 only): the share of the still-misclassified samples, by criterion, that count as high;
    1.0 makes every still-wrong sample high (for runs where training has fixed most samples).

    Provenance (runs, criterion, counts) is stored as JSON in each split's `info.description`.
    """
    from datasets import Dataset, DatasetDict  # heavy; only needed when pairs are actually built

    check_criterion(criterion)
    if not 0.0 < high_share <= 1.0:
        raise UserError(f"high_share={high_share!r} must be in (0, 1] (e.g. 0.5)")
    if not 0.0 < heldout_share < 1.0:
        raise UserError(f"heldout_share={heldout_share!r} must be between 0 and 1 (e.g. 0.2)")
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise UserError("no run directories given; pass one or more finished runs (runs/<name>)")
    items: list[Item] = []
    for d in dirs:
        samples, signals, rewrites = _read(d)
        items += (rewrite_items(samples, signals, rewrites, str(d)) if criterion == "rewrite"
                  else signal_items(samples, signals, criterion, str(d), high_share, _inputs(d, criterion)))
    high_texts = {i.text for i in items if i.high}
    low_texts = {i.text for i in items if not i.high}
    n_high, n_low = len(high_texts), len(low_texts)
    if n_high < MIN_PER_GROUP or n_low < MIN_PER_GROUP:
        names = ", ".join(str(d) for d in dirs)
        raise UserError(f"{names}: too few usable samples for {criterion!r} pairs ({n_high} high, {n_low} low; need "
                        f"{MIN_PER_GROUP} of each); train longer, use more samples, pick another criterion, or raise high_share")
    rng = np.random.default_rng(seed)
    # Split by text, so no sample is on both sides; each side gets texts of both groups.
    heldout = split_units(sorted(high_texts), heldout_share, rng)
    heldout |= split_units(sorted(low_texts - high_texts) or sorted(low_texts), heldout_share, rng)
    n_test = max(1, round(max_pairs * heldout_share))
    splits = {name: _pairs_within_groups([i for i in items if (i.text in heldout) == in_test], criterion, n, rng)
              for name, in_test, n in (("train", False, max_pairs - n_test), ("test", True, n_test))}
    provenance = {"runs": [str(d) for d in dirs], "criterion": criterion, "seed": seed, "high_share": high_share, "high": n_high, "low": n_low,
                  "pairs": {k: len(v) for k, v in splits.items()}}
    out = DatasetDict({k: Dataset.from_list(v, features=None) if v else
                       Dataset.from_dict({"chosen": [], "rejected": [], "margin": []}) for k, v in splits.items()})
    for ds in out.values():
        ds.info.description = json.dumps(provenance)
    return out


def provenance(pairs) -> dict:
    """What build_pairs recorded about where the pairs came from ({} for hand-made pairs)."""
    try:
        return json.loads(pairs["train"].info.description or "{}")
    except (KeyError, ValueError):
        return {}
