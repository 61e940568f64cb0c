"""Built-in seed generator: multi-step arithmetic word problems with exact gold answers.

Every problem is a short story about one person and one kind of item. Each sentence after
the first changes the count with one operation (add, subtract, multiply, halve), and the
question asks for the final count. The reference solution has one step per operation;
each step restates the sentence, then the equation, e.g.::

    He sells 35, so 83-35=48.

and the last step is ``#### <answer>``. Steps are separated by a blank line, which is the
step boundary of the pruned search. The same text format is what the ``tiny`` model is
trained on, so this module is also the tiny model's whole world: its vocabulary is the
words used here.

Contract: ``generate(n, seed, difficulty)`` is a pure function of its arguments; the same
arguments give byte-identical problems on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = {"Tom": "He", "Ben": "He", "Sam": "He", "Max": "He", "Anna": "She", "Mia": "She", "Lily": "She", "Zoe": "She"}
ITEMS = ["apples", "pens", "cards", "books", "eggs", "coins", "stickers", "marbles"]
ADD_VERBS = ["buys", "finds", "gets", "makes"]
SUB_VERBS = ["sells", "loses", "eats", "gives away"]
STEP_SEP = "\n\n"
ANSWER_MARK = "####"


@dataclass(frozen=True)
class Difficulty:
    """The difficulty knob: how many operations, and how large the numbers get."""

    min_steps: int = 2
    max_steps: int = 4
    max_start: int = 99
    max_operand: int = 60
    max_value: int = 999
    allow_mul: bool = True


@dataclass(frozen=True)
class WorldProblem:
    question: str
    steps: tuple[str, ...]
    answer: int
    n_ops: int

    @property
    def solution(self) -> str:
        """Reference solution in the step format, ending with ``#### answer``."""
        return STEP_SEP.join((*self.steps, f"{ANSWER_MARK} {self.answer}"))


def _one_op(rng: random.Random, pron: str, value: int, d: Difficulty) -> tuple[str, str, int] | None:
    """Pick one operation valid at ``value``; return (sentence, step, new value) or None."""
    kind = rng.choice(["add", "add", "sub", "sub", "mul", "half"] if d.allow_mul else ["add", "sub"])
    if kind == "add":
        b = rng.randint(1, d.max_operand)
        new = value + b
        if new > d.max_value:
            return None
        verb = rng.choice(ADD_VERBS)
        return f"{pron} {verb} {b} more.", f"{pron} {verb} {b} more, so {value}+{b}={new}.", new
    if kind == "sub":
        if value < 2:
            return None
        b = rng.randint(1, min(d.max_operand, value - 1))
        verb = rng.choice(SUB_VERBS)
        return f"{pron} {verb} {b}.", f"{pron} {verb} {b}, so {value}-{b}={value - b}.", value - b
    if kind == "mul":
        k = rng.choice([2, 3])
        if value * k > d.max_value:
            return None
        word = {2: "twice", 3: "three times"}[k]
        return (
            f"Then {pron.lower()} has {word} as many.",
            f"Then {pron.lower()} has {word} as many, so {value}*{k}={value * k}.",
            value * k,
        )
    if value % 2 or value < 2:
        return None
    return f"{pron} gives half away.", f"{pron} gives half away, so {value}/2={value // 2}.", value // 2


def make_problem(rng: random.Random, d: Difficulty) -> WorldProblem:
    """One problem drawn from ``rng`` at difficulty ``d``."""
    name = rng.choice(sorted(NAMES))
    pron = NAMES[name]
    item = rng.choice(ITEMS)
    n_ops = rng.randint(d.min_steps, d.max_steps)
    value = rng.randint(10, d.max_start)
    sentences = [f"{name} has {value} {item}."]
    steps: list[str] = []
    while len(steps) < n_ops:
        op = _one_op(rng, pron, value, d)
        if op is None:
            continue
        sentence, step, value = op
        sentences.append(sentence)
        steps.append(step)
    sentences.append(f"How many {item} does {name} have now?")
    return WorldProblem(" ".join(sentences), tuple(steps), value, n_ops)


def generate(n: int, seed: int, difficulty: Difficulty | None = None) -> list[WorldProblem]:
    """``n`` problems, reproducible from ``seed``."""
    rng = random.Random(seed)
    d = difficulty or Difficulty()
    return [make_problem(rng, d) for _ in range(n)]
