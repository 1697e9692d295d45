"""An exported GGUF answered by llama.cpp itself (llama-cpp-python, its chat template from the file) against the run's
own final held-out replies: the serving side of `nslora export --gguf`. Run it with a Python that has llama_cpp:

    nslora export runs/<name> --gguf model.gguf
    lcp/bin/python bench/gguf_llama_cpp.py model.gguf runs/<name> [MAX_NEW_TOKENS]   # lcp: a venv with llama-cpp-python

Prints one JSON line: prompts, replies equal to the run's, their share, and one example pair.
"""

import json
import sqlite3
import sys


def main() -> None:
    from llama_cpp import Llama

    gguf, run = sys.argv[1], sys.argv[2]
    db = sqlite3.connect(f"{run}/run.sqlite")
    last = db.execute("SELECT MAX(epoch) FROM evals").fetchone()[0]
    rows = db.execute("SELECT s.system, s.question, e.reply FROM evals e JOIN samples s ON s.id = e.sample_id "
                      "WHERE e.epoch = ?", (last,)).fetchall()
    max_new = int(sys.argv[3]) if len(sys.argv) > 3 else 8  # the run's train.max_new_tokens (the default's is 8)
    llm = Llama(model_path=gguf, n_ctx=2048, verbose=False, seed=0)
    same, example = 0, None
    for system, question, reply in rows:
        out = llm.create_chat_completion(messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
                                         temperature=0.0, max_tokens=max_new)
        text = out["choices"][0]["message"]["content"].strip()
        same += text == reply.strip()
        example = example or [text, reply]
    print(json.dumps({"prompts": len(rows), "equal_replies": same, "share": round(same / max(1, len(rows)), 3), "example": example}))


if __name__ == "__main__":
    main()
