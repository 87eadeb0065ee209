"""Writes shakespeare_next_word.jsonl: 30 questions "which word continues this line?" from tinyshakespeare.

    python examples/lm_eval_tasks/make_shakespeare_next_word.py ../shared/data/tinyshakespeare/input.txt

Each question is a line cut before one of its words (the line before it given too), that word and three other
words of the text as choices, in a seeded random order. Only characters of the text's first 20,000 characters
appear, so a char-level model trained on just those (the tests' tiny model) can score every choice.
"""

import json
import random
import re
import sys
from pathlib import Path

QUESTIONS, SEED, KNOWN = 30, 1234, 20_000


def main(source: Path) -> None:
    text = source.read_text(encoding="utf-8")
    known = set(text[:KNOWN])
    lines = [line for line in text.splitlines()]
    words = sorted({w for w in re.findall(r"[A-Za-z]+", text) if len(w) > 2 and set(w) <= known})
    rng = random.Random(SEED)
    out = []
    while len(out) < QUESTIONS:
        i = rng.randrange(1, len(lines))
        line, before = lines[i].split(" "), lines[i - 1]
        cut = rng.randrange(2, max(3, len(line)))
        if not before or cut >= len(line) or not re.fullmatch(r"[A-Za-z]{3,}", line[cut]):
            continue
        context = f"{before}\n{' '.join(line[:cut])}"
        answer = line[cut]
        choices = [answer, *rng.sample([w for w in words if w != answer], 3)]
        rng.shuffle(choices)
        if set(context + "".join(choices)) <= known:
            out.append({"context": context, "choices": choices, "answer": choices.index(answer)})
    path = Path(__file__).with_name("shakespeare_next_word.jsonl")
    path.write_text("".join(json.dumps(q) + "\n" for q in out), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
