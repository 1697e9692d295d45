"""`nslora export RUN --merged DIR --gguf FILE`: the run's fine-tuned model as a transformers folder and a GGUF file.

The base model the run trained (its config's model.name_or_path, a GGUF dequantised as the run did) gets the
run's LoRA adapter merged into its weights (peft's merge_and_unload), and is saved with its tokenizer and chat
template, so `AutoModelForCausalLM.from_pretrained(DIR)` — and so vLLM, TGI or any transformers stack — serves
the fine-tuned model without peft. The folder is written under a temporary name, checked, then renamed: the
reloaded folder must give the adapter's logits on the run's held-out prompts before it counts as exported.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from nslora.core.errors import UserError

# float32 merge: the reloaded folder matches base + adapter to rounding (measured 4.7e-5 on SmolLM2-135M, ~1e-6 on
# the tiny model). The bound grows with the logits' scale (1e-6 of the largest), so a big model is not refused
# for float32 rounding alone.
TOLERANCE = 1e-4
# Largest logit difference of the GGUF file read back, as a share of the largest logit: f16 and q8_0 round.
GGUF_TOLERANCE = {"f16": 0.01, "q8_0": 0.05}


# How many of the run's held-out prompts (the first by id) the merged folder and the GGUF are checked on.
CHECK_PROMPTS = 16


def _prompts(run_dir: Path, n: int = CHECK_PROMPTS) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT system, question FROM samples WHERE split='heldout' ORDER BY id LIMIT ?", (n,)).fetchall()
    finally:
        db.close()


def _logits(model, tokenizer, prompts):
    import torch

    from adapters.train import prompt_text

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer([prompt_text(tokenizer, s, q) for s, q in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            return model(**enc).logits
    finally:
        tokenizer.padding_side = side


def _merged(run: Path):
    """(merged model, tokenizer, check prompts, the adapter's logits on them) for a finished run folder."""
    from peft import PeftModel

    from adapters.model import load_model
    from router import config as config_mod

    if not (run / "adapter" / "adapter_config.json").is_file() or not (run / "config.yaml").is_file():
        raise UserError(f"{run} has no adapter/ (or no config.yaml); give the folder of a finished run (it has metrics.json)")
    cfg = config_mod.load(str(run / "config.yaml"))
    base, tokenizer, _ = load_model(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.cache_dir)
    model = PeftModel.from_pretrained(base, run / "adapter").eval()
    prompts = _prompts(run)
    expected = _logits(model, tokenizer, prompts)
    return model.merge_and_unload(), tokenizer, prompts, expected


def export_model(run_dir: str | Path, merged_dir: str | Path | None = None, gguf_file: str | Path | None = None,
                 gguf_type: str = "f16", overwrite: bool = False) -> dict[str, Any]:
    """Merge the run's adapter into its base model; save it as a transformers folder and / or a GGUF file, each
    reloaded and checked against the adapter's logits before it is put in place."""
    from nslora.core.atomic import refuse_existing

    run = Path(run_dir)
    if not overwrite:
        for flag, t in (("--merged", merged_dir), ("--gguf", gguf_file)):
            if t is not None:
                refuse_existing(t, flag)
    if gguf_file is not None:
        from nslora.commands.gguf_out import QTYPES

        if gguf_type not in QTYPES:
            raise UserError(f"--gguf-type={gguf_type!r} must be one of {', '.join(QTYPES)}")
    merged, tokenizer, prompts, expected = _merged(run)
    report: dict[str, Any] = {"adapter": str(run / "adapter"), "checked_prompts": len(prompts)}
    if merged_dir is not None:
        report.update(_save_folder(merged, tokenizer, Path(merged_dir), prompts, expected))
    if gguf_file is not None:
        report.update(_save_gguf(merged, tokenizer, Path(gguf_file), gguf_type, prompts, expected))
    return report


def _save_folder(merged, tokenizer, out: Path, prompts, expected) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from nslora.core.atomic import folder_atomic

    with folder_atomic(out) as tmp:  # a refusal below leaves nothing at `out`
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp).eval()
        diff = float((_logits(reloaded, tokenizer, prompts) - expected).abs().max())
        bound = max(TOLERANCE, 1e-6 * float(expected.abs().max()))
        if not diff <= bound:
            raise UserError(f"the merged model's logits differ from the adapter's by {diff:.2e} (over {bound:.1e}); nothing was written to {out}")
    return {"merged": str(out), "parameters": sum(p.numel() for p in reloaded.parameters()),
            "max_logit_difference": diff, "files": sorted(p.name for p in out.iterdir())}


def _save_gguf(merged, tokenizer, out: Path, qtype: str, prompts, expected) -> dict[str, Any]:
    """Written beside the target, read back with transformers' GGUF loader (which undoes llama.cpp's layout),
    and its logits compared with the adapter's relative to their scale: f16 and q8_0 round the weights."""
    from transformers import AutoModelForCausalLM

    from nslora.commands.gguf_out import write_gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial.gguf")
    info = write_gguf(merged, tokenizer, tmp, qtype, name=out.stem)
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp.parent), gguf_file=tmp.name).eval()
    got = _logits(reloaded, tokenizer, prompts)
    # The next-token logits of each prompt (padding positions' logits are noise and would dominate a maximum).
    relative = float((got[:, -1] - expected[:, -1]).abs().max() / expected[:, -1].abs().max())
    same_top = float((got[:, -1].argmax(-1) == expected[:, -1].argmax(-1)).float().mean())
    if not relative <= GGUF_TOLERANCE[qtype]:
        tmp.unlink()
        raise UserError(f"the GGUF model's logits differ from the adapter's by {relative:.1%} of their scale (over "
                        f"{GGUF_TOLERANCE[qtype]:.0%}); nothing was written to {out}")
    from nslora.core.atomic import put_file

    put_file(tmp, out)
    return {**info, "gguf": str(out), "gguf_relative_logit_difference": relative, "gguf_same_next_token": same_top}


def export_trl(run_dir: str | Path, out_file: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """The run's augmented training data (rewritten prompts where accepted, the rest as they were) as JSONL in
    TRL's conversational prompt-completion format, which `trl sft --dataset_name FILE` trains on directly."""
    import json

    from nslora.core.atomic import refuse_existing, write_text

    run, out = Path(run_dir), Path(out_file)
    if not overwrite:
        refuse_existing(out, "--trl")
    src = run / "augmented.jsonl"
    if not src.is_file():
        raise UserError(f"{run} has no augmented.jsonl; give the folder of a finished run (it has metrics.json)")
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = []
    for r in rows:
        prompt = ([{"role": "system", "content": r["system"]}] if r["system"] else []) + [{"role": "user", "content": r["question"]}]
        lines.append(json.dumps({"prompt": prompt, "completion": [{"role": "assistant", "content": r["target"]}],
                                 "id": r["id"], "rewritten": r["rewritten"]}) + "\n")
    write_text(out, "".join(lines))
    return {"trl": str(out), "rows": len(lines), "rewritten": sum(bool(r["rewritten"]) for r in rows)}
