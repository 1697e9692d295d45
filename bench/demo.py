"""What the README shows the first run printing: `nslora run` with no config (the embedded default), in a child
process, its printed summary and its figures as one JSON line, stamped (results/demo.json).

    python bench/demo.py > results/demo.json

tests/test_docs.py checks that the README's printout is this file's `printed`, line for line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def main() -> None:
    from nslora.core.provenance import stamp
    from router.config import EMBEDDED_DEFAULT
    from speed import demo

    got = demo(ROOT)
    printed = got.pop("summary")
    print(json.dumps({"bench": "demo", "command": "nslora run", "printed": printed, **got, "stamp": stamp(EMBEDDED_DEFAULT)}))


if __name__ == "__main__":
    main()
