"""The saved policy folder: self-describing, JSON + safetensors only.

    policy.json        format version, backbone, threshold, band, fallback, p, provenance, metrics
    calibration.json   isotonic knots or Platt coefficients
    model/             save_pretrained of the reward model and its tokenizer
"""

from __future__ import annotations

import json
from pathlib import Path

from nslora.core.errors import UserError

FORMAT_VERSION = 1
FORMAT = "ns-lora-reward-policy"
FIX = "retrain it with `nslora policy train RUN_DIR... --out DIR` (or copy the whole folder)"


def write_json(path: Path, data: dict) -> None:
    from nslora.core import atomic

    atomic.write_json(path, data, sort_keys=True)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"policy folder {path.parent}: {path.name} is missing; {FIX}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); {FIX}") from None


def load_folder(path: str | Path) -> tuple[dict, dict, Path]:
    """Check a policy folder and return (policy.json, calibration.json, model dir) without loading the model."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"policy folder {root} does not exist; {FIX}")
    meta = _read_json(root / "policy.json")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{root / 'policy.json'}: format {meta.get('format')!r} version {meta.get('format_version')!r}, "
                        f"this ns-lora reads {FORMAT!r} version {FORMAT_VERSION}; {FIX}")
    cal = _read_json(root / "calibration.json")
    model_dir = root / "model"
    for name in ("config.json", "tokenizer_config.json"):
        if not (model_dir / name).is_file():
            raise UserError(f"policy folder {root}: model/{name} is missing; {FIX}")
    if not any(model_dir.glob("*.safetensors")):
        raise UserError(f"policy folder {root}: model/model.safetensors is missing; {FIX}")
    return meta, cal, model_dir


def load_model(model_dir: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    return model, tokenizer
