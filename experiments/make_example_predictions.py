"""Write the small example predictions shipped in ensemble/examples/ (deterministic).

    python experiments/make_example_predictions.py

Five simulated voters on 80 four-option questions: accuracies 0.55-0.75, errors
partly shared (a "hard item" effect), confidences higher on correct answers, a few
unparseable answers (abstentions). Used by the README's offline demo and by tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "ensemble" / "examples"
LETTERS = "ABCD"


def main(n_items: int = 80, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    skill = {"lora-s0-r8": 0.75, "lora-s1-r8": 0.70, "lora-s2-r16": 0.66, "lora-s3-r4": 0.60, "lora-s4-r4": 0.55}
    gold = rng.integers(0, 4, n_items)
    hard = rng.random(n_items) < 0.25  # hard items: everyone is more often wrong, in the same way
    decoy = (gold + rng.integers(1, 4, n_items)) % 4
    rows, gold_rows = [], []
    for i in range(n_items):
        item = f"q{i:03d}"
        gold_rows.append({"item": item, "answer": LETTERS[gold[i]]})
        for voter, acc in skill.items():
            p_right = acc - 0.3 if hard[i] else min(acc + 0.1, 0.95)
            if rng.random() < 0.03:
                rows.append({"item": item, "voter": voter, "answer": None, "text": "I am not sure."})
                continue
            right = rng.random() < p_right
            ans = gold[i] if right else (decoy[i] if rng.random() < 0.6 else rng.choice([c for c in range(4) if c != gold[i]]))
            logits = rng.normal(0, 0.6, 4)
            logits[ans] += 1.8 if right else 1.0
            probs = np.exp(logits) / np.exp(logits).sum()
            ans = int(np.argmax(probs))
            rows.append({"item": item, "voter": voter, "answer": LETTERS[ans],
                         "confidence": round(float(probs[ans]), 4),
                         "probs": {LETTERS[c]: round(float(p), 4) for c, p in enumerate(probs)}})
    for r in rows:  # rounding may leave sums at 0.9999: put the remainder on the top class
        if r.get("probs"):
            top = max(r["probs"], key=r["probs"].get)
            r["probs"][top] = round(r["probs"][top] + 1 - sum(r["probs"].values()), 4)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (OUT / "gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gold_rows))
    print(f"wrote {len(rows)} votes on {n_items} items to {OUT}")


if __name__ == "__main__":
    main()
