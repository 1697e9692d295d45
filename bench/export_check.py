"""Export round trip on a real run: the merged folder against base + adapter, and the GGUF files' greedy replies
against the merged model's on the run's held-out prompts.

    python bench/export_check.py runs/<name> [--out /tmp/export-check] [--limit 200]

Prints one JSON line: the merged folder's largest logit difference from base + adapter, and per GGUF type (f16,
q8_0) its size and the share of held-out prompts whose greedy reply equals the merged model's.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--out", default="/tmp/export-check")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.generate import greedy_replies
    from nslora.commands.model_export import export_model
    from router.run import _quiet_libraries

    _quiet_libraries()
    run, out = Path(args.run_dir), Path(args.out)
    db = sqlite3.connect(run / "run.sqlite")
    prompts = db.execute("SELECT system, question FROM samples WHERE split='heldout' ORDER BY id LIMIT ?", (args.limit,)).fetchall()
    db.close()
    result: dict = {"run": str(run), "prompts": len(prompts)}
    started = time.perf_counter()
    report = export_model(run, merged_dir=out / "merged", overwrite=True)
    result["merged_max_logit_difference"] = report["max_logit_difference"]
    result["merged_seconds"] = round(time.perf_counter() - started, 1)
    tok = AutoTokenizer.from_pretrained(out / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    reference = dict(greedy_replies(merged, tok, prompts, args.max_new_tokens, 16))
    for qtype in ("f16", "q8_0"):
        started = time.perf_counter()
        file = out / f"model-{qtype}.gguf"
        info = export_model(run, gguf_file=file, gguf_type=qtype, overwrite=True)
        model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=file.name).eval()
        replies = dict(greedy_replies(model, tok, prompts, args.max_new_tokens, 16))
        same = sum(replies[i] == reference[i] for i in reference) / len(reference)
        result[qtype] = {"bytes": info["bytes"], "relative_logit_difference": info["gguf_relative_logit_difference"],
                         "greedy_replies_equal_to_merged": same, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
