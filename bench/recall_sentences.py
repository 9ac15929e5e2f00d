"""Would sentence-level vectors raise dense recall? An offline probe, run before building
them into the store (which would need several index points per memory).

For every conversation of a LoCoMo-format set it embeds each turn ("Speaker: text") and
each of the turn's sentences with sentence-transformers on engram's MiniLM folder, then
ranks turns for every question by
- the turn's vector alone (engram's dense side without its turn context),
- the best of its sentences,
- the larger of the two,
- their mean,
and prints dense recall@10 for each. Run on the tuning sets only:

    .venv/bin/python bench/recall_sentences.py tests/data/locomo_synthetic.json \
        tests/data/locomo_synthetic_long.json

(sentence-transformers is installed by `make bench-compare`).
"""

import json
import re
import sys

import torch
from sentence_transformers import SentenceTransformer


def sentences(text):
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", text) if p.strip()]
    return parts or [text]


def turns_of(conversation):
    sessions = sorted((k for k in conversation if re.fullmatch(r"session_\d+", k)), key=lambda k: int(k[8:]))
    return [t for k in sessions for t in conversation[k]]


def probe(model, path):
    recalls = {}
    for sample in json.load(open(path, encoding="utf-8")):
        turns = turns_of(sample["conversation"])
        encode = lambda texts: model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
        whole = encode([f'{t["speaker"]}: {t["text"]}' for t in turns])
        owner, parts = [], []
        for i, t in enumerate(turns):
            for s in sentences(t["text"]):
                owner.append(i)
                parts.append(s)
        part_vectors = encode(parts)
        owner = torch.tensor(owner)
        for qa in sample["qa"]:
            if not qa["evidence"]:
                continue
            q = encode([qa["question"]])[0]
            by_turn = whole @ q
            by_sentence = torch.full((len(turns),), -1.0).scatter_reduce(0, owner, part_vectors @ q, reduce="amax")
            for name, score in [
                ("turn", by_turn),
                ("best sentence", by_sentence),
                ("max of both", torch.maximum(by_turn, by_sentence)),
                ("mean of both", (by_turn + by_sentence) / 2),
            ]:
                top = {turns[i]["dia_id"] for i in score.topk(min(10, len(turns))).indices.tolist()}
                hit = sum(e in top for e in qa["evidence"]) / len(qa["evidence"])
                recalls.setdefault(name, []).append(hit)
    return {name: sum(v) / len(v) for name, v in recalls.items()}


def main():
    model = SentenceTransformer("models/all-MiniLM-L6-v2", device="cpu")
    for path in sys.argv[1:]:
        result = probe(model, path)
        print(path, "  ".join(f"{name}: {r:.3f}" for name, r in result.items()))


if __name__ == "__main__":
    main()
