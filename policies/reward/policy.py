"""The `reward` policy: a trained, calibrated classifier routes; inside its uncertainty band a signal policy does.

In the graph this is classify -> confident? route : signals -> route. `calibrate(views)` scores the whole
round in batches (and calibrates the fallback on the same views), so `decide(view)` is a dictionary lookup.
"""

from __future__ import annotations

import math

import numpy as np

from policies.base import Decision, Policy, SampleView, build, register
from policies.reward.pairs import sample_text


@register
class RewardPolicy(Policy):
    name = "reward"

    def __init__(self, path: str | None = None, p: float = 0.1, band: float | None = None, fallback: str | None = None, batch_size: int = 64,
                 needs_saturation: bool = True):
        self.path = path
        # The classifier judges the text, not the training curve, so it may route from the first epoch on
        # (needs_saturation=False: every epoch's misclassified samples are candidates).
        self.needs_saturation = needs_saturation
        self.p = p
        # None: the band and the fallback saved with the folder (what `nslora policy train` was given) apply;
        # a value here overrides them for this run. p is the run's routing budget (saturation.p), shared by every
        # policy; the saved p is the share the saved threshold was fitted to, used when a round has no candidates.
        self.band = band
        self.fallback = fallback
        self.batch_size = batch_size

    def preflight(self) -> None:
        """Before a run starts: the folder exists and is a saved policy (one line otherwise)."""
        from nslora.core.errors import UserError
        from policies.reward.folder import load_folder

        if not self.path:
            raise UserError("policy.name=reward needs policy.path: the folder written by `nslora policy train RUN_DIR... --out DIR`")
        load_folder(self.path)  # refuses a missing or foreign folder before anything runs

    # -- the folder, loaded once and only when first needed (torch/transformers come with it)
    def _load(self) -> None:
        if hasattr(self, "model_"):
            return
        from policies.reward.folder import load_folder, load_model

        self.meta_, self.calibration_, model_dir = load_folder(self.path)
        self.model_, self.tokenizer_ = load_model(model_dir)

    def score_texts(self, texts) -> np.ndarray:
        """Raw reward scores (higher = more in need of the symbolic branch)."""
        from policies.reward.scoring import score_texts

        self._load()
        return score_texts(self.model_, self.tokenizer_, texts, self.batch_size, self.meta_.get("max_length", 256))

    def proba(self, texts) -> np.ndarray:
        """Calibrated P(symbolic) for each text."""
        from policies.reward.calibration import apply_calibration

        scores = self.score_texts(texts)  # loads the folder, calibration included
        return apply_calibration(self.calibration_, scores)

    def calibrate(self, views: list[SampleView]) -> "RewardPolicy":
        from policies.reward.calibration import budget_threshold

        self._load()
        texts = sorted({sample_text(v.system, v.question) for v in views})
        self.proba_ = dict(zip(texts, self.proba(texts).tolist()))
        # Like the signal policies, route a share p of *this round's* candidates; the held-out threshold saved
        # with the folder is only used when there is no round to calibrate on.
        probs = [self.proba_[sample_text(v.system, v.question)] for v in views]
        self.threshold_ = budget_threshold(probs, self.p) if probs else float(self.meta_["threshold"])
        self.band_ = float(self.meta_["band"] if self.band is None else self.band)
        self.fallback_name_ = self.fallback or str(self.meta_.get("fallback") or "loss-ratio")
        self.fallback_ = build(self.fallback_name_, {}, p=self.p, seed=0).calibrate(views)
        return self

    def decide(self, view: SampleView) -> Decision:
        if not hasattr(self, "threshold_"):
            raise RuntimeError("RewardPolicy is not calibrated; call calibrate(views) first")
        text = sample_text(view.system, view.question)
        prob = self.proba_.get(text)
        if prob is None:  # a view the round did not include: score it alone (slow path)
            prob = float(self.proba([text])[0])
        thr = self.threshold_
        if abs(prob - thr) < self.band_:
            d = self.fallback_.decide(view)
            return Decision(d.route, d.confidence, f"classifier unsure (P(symbolic)={prob:.3f}, threshold {thr:.3f}, "
                            f"band {self.band_:.3f}); deferred to {self.fallback_name_}: {d.reason}", "fallback")
        symbolic = prob >= thr
        # Confidence: how far P sits from the threshold, as a share of the room on that side, mapped to [0.5, 1].
        room = (1.0 - thr) if symbolic else thr
        confidence = 0.5 + 0.5 * min(1.0, abs(prob - thr) / room) if room > 0 and math.isfinite(thr) else 1.0
        verb = "at or above" if symbolic else "below"
        return Decision("symbolic" if symbolic else "numerical", float(confidence),
                        f"classifier P(symbolic)={prob:.3f} is {verb} the threshold {thr:.3f}", "classifier")
