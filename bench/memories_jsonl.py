"""Writes N memories in the `engram store import` format to standard output: random
unit vectors (the width of all-MiniLM-L6-v2 by default) and sentences of 12 words drawn
from a synthetic vocabulary of 5,000, all in one scope. For measuring what a store or a
node's cache holds per memory without spending the time to embed real text.

    python3 bench/memories_jsonl.py --n 100000 --user cache-probe > memories.jsonl
"""

import argparse
import json
import math
import random
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--tenant", default="default")
    ap.add_argument("--user", default="cache-probe")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "da", "gu", "zo"]
    vocabulary = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(6000)})[:5000]
    out = sys.stdout
    for i in range(args.n):
        v = [rng.gauss(0.0, 1.0) for _ in range(args.dim)]
        norm = math.sqrt(sum(x * x for x in v))
        record = {
            "type": "entry",
            "kind": "fact",
            "text": f"memory {i}: " + " ".join(rng.choice(vocabulary) for _ in range(12)),
            "embedding": [round(x / norm, 5) for x in v],
            "scope": {"tenant": args.tenant, "user_id": args.user},
        }
        out.write(json.dumps(record, separators=(",", ":")))
        out.write("\n")


if __name__ == "__main__":
    main()
