"""Arithmetic word problems with exact answers, and the two reasoning styles of the pretraining corpus.

A problem is a short story with two or three operations on small whole numbers ("Ana has 7 pens. She buys
5 more and gives 3 away. How many pens does Ana have now?"); its answer is the exact integer result, never
negative. Problems are drawn from a seeded generator; the split is a pure function of the problem text
(a SHA-256 bucket), so a train and a held-out problem can never be the same, whatever the seeds.

Two trace styles answer a problem:
  language: "First, 7 + 5 = 12. Then, 12 - 3 = 9. Finally, the answer is \\boxed{9}."
  code:     "```python\\ntotal = 7\\ntotal = total + 5  # 12\\ntotal = total - 3  # 9\\nprint(total)\\n```\\n
             The answer is \\boxed{9}."
The corpus writer (`corpus_trace`) draws the style per problem with p(code): one soft, template-independent
value (`STYLE_CODE_PROBABILITY`, so the base's first answer token is a coin it can be taught to bias) or, with
`code_probability=None`, the per-template values of `TEMPLATES` (the original base). It makes arithmetic slips
(`Slips`): a rare random slip in either style, and a systematic one in one style — a step with a carry or a
borrow is more often than not written without it (48 + 7 = 45). Random slips are spread over several wrong
values, so a model that decodes greedily learns past them; a systematic slip is the most likely continuation,
so the base model reproduces it and the style that carries it is right less often, by construction.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

Style = Literal["language", "code"]
Split = Literal["train", "heldout"]

NAMES = ("Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Mo", "Nia",
         "Omar", "Pia", "Raj", "Sara", "Tom", "Uma")
ITEMS = ("apples", "pens", "coins", "books", "shells", "stamps", "cards", "marbles", "eggs", "plums")


@dataclass(frozen=True)
class Template:
    """One story shape: its sentences, the operations it applies, and how often the corpus answers in code."""

    name: str
    code_probability: float


# Style preference differs by story shape, as it does by topic in real corpora; greedy decoding then
# writes code for the templates whose probability is above 1/2 and language for the others.
# Each side has one multiplication template, so the style is not a proxy for the harder operation.
TEMPLATES = (
    Template("buy_give", 0.85),
    Template("give_buy", 0.80),
    Template("boxes", 0.75),
    Template("buy_buy", 0.70),
    Template("share_more", 0.30),
    Template("lose_find", 0.25),
)


# The soft style preference of the code-using bases (Qwen2.5-Math writes code for about 65% of MATH problems).
STYLE_CODE_PROBABILITY = 0.65


@dataclass(frozen=True)
class Step:
    """One arithmetic step `left op right = result` (op is '+', '-' or '*')."""

    left: int
    op: str
    right: int
    result: int


@dataclass(frozen=True)
class Problem:
    """A word problem: its text, the exact steps that solve it, the answer as a string, and its template."""

    text: str
    steps: tuple[Step, ...]
    answer: str
    template: str

    @property
    def prompt_id(self) -> str:
        return "p" + hashlib.sha256(self.text.encode()).hexdigest()[:12]


def split_of(text: str, heldout_percent: int = 20) -> Split:
    """`heldout` for the problems whose SHA-256 bucket (first 4 bytes mod 100) is below `heldout_percent`."""
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 100
    return "heldout" if bucket < heldout_percent else "train"


def _apply(left: int, op: str, right: int) -> Step:
    result = {"+": left + right, "-": left - right, "*": left * right}[op]
    return Step(left, op, right, result)


def random_problem(rng: random.Random, max_operand: int) -> Problem:
    """One problem of a random template; operands in 1..max_operand, every intermediate result ≥ 0."""
    template = rng.choice(TEMPLATES)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, max_operand), rng.randint(1, max_operand)
    if template.name == "buy_give":
        first = _apply(a, "+", b)
        c = rng.randint(1, first.result)
        steps = (first, _apply(first.result, "-", c))
        text = f"{name} has {a} {item}. {name} buys {b} more and gives {c} away. How many {item} does {name} have now?"
    elif template.name == "give_buy":
        b = rng.randint(1, a)
        first = _apply(a, "-", b)
        c = rng.randint(1, max_operand)
        steps = (first, _apply(first.result, "+", c))
        text = f"{name} has {a} {item}, gives {b} to a friend, then gets {c} more. How many {item} now?"
    elif template.name == "boxes":
        a = rng.randint(2, 9)
        first = _apply(a, "*", b)
        c = rng.randint(1, max_operand)
        steps = (first, _apply(first.result, "+", c))
        text = f"There are {a} boxes with {b} {item} each and {c} loose {item}. How many {item} in total?"
    elif template.name == "share_more":
        a = rng.randint(2, 9)
        first = _apply(a, "*", b)
        c = rng.randint(1, first.result)
        steps = (first, _apply(first.result, "-", c))
        text = f"{name} packs {a} bags of {b} {item} and eats {c}. How many {item} are left?"
    elif template.name == "buy_buy":
        first = _apply(a, "+", b)
        c = rng.randint(1, max_operand)
        steps = (first, _apply(first.result, "+", c))
        text = f"{name} buys {a} {item} on Monday, {b} on Tuesday and {c} on Friday. How many {item} in all?"
    else:  # lose_find
        b = rng.randint(1, a)
        first = _apply(a, "-", b)
        c = rng.randint(1, max_operand)
        second = _apply(first.result, "+", c)
        d = rng.randint(1, second.result)
        steps = (first, second, _apply(second.result, "-", d))
        text = (f"{name} had {a} {item}, lost {b}, found {c}, then gave {d} away. "
                f"How many {item} does {name} have?")
    return Problem(text=text, steps=steps, answer=str(steps[-1].result), template=template.name)


def make_problems(count: int, split: Split, seed: int, max_operand: int) -> list[Problem]:
    """`count` distinct problems of one split, drawn in a fixed order from `random.Random(seed)`."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 200 * count + 1000:
            raise ValueError(f"cannot draw {count} distinct {split} problems with max_operand={max_operand}")
        problem = random_problem(rng, max_operand)
        if problem.text in seen or split_of(problem.text) != split:
            continue
        seen.add(problem.text)
        out.append(problem)
    return out


@dataclass(frozen=True)
class Slips:
    """Arithmetic errors of the corpus writer, per step: `random` in either style (result off by 1..3), and the
    forgotten carry (+) or borrow (−) on such a step (the result ∓ 10): `language_carry` in the language style,
    `code_carry` in the code style."""

    random: float = 0.05
    language_carry: float = 0.6
    code_carry: float = 0.0

    def carry(self, style: Style) -> float:
        return self.code_carry if style == "code" else self.language_carry


DEFAULT_SLIPS = Slips()
NO_SLIPS = Slips(random=0.0, language_carry=0.0)


def has_carry_or_borrow(step: Step) -> bool:
    """True for an addition whose units digits carry (7 + 8) and a subtraction whose units digits borrow (42 − 7)."""
    if step.op == "+":
        return step.left % 10 + step.right % 10 >= 10
    if step.op == "-":
        return step.left % 10 < step.right % 10
    return False


def _random_slip(step: Step, rng: random.Random) -> Step:
    """The same step with a wrong result, off by 1..3 either way."""
    return Step(step.left, step.op, step.right, step.result + rng.choice((-3, -2, -1, 1, 2, 3)))


def _forgotten_carry(step: Step) -> Step:
    """The step as written without its carry (the sum 10 short) or borrow (the difference 10 over)."""
    return Step(step.left, step.op, step.right, step.result - 10 if step.op == "+" else step.result + 10)


def language_trace(steps: tuple[Step, ...]) -> str:
    """'First, a + b = c. Then, … Finally, the answer is \\boxed{N}.' (N = the last step's result)."""
    words = ["First"] + ["Then"] * (len(steps) - 1)
    body = " ".join(f"{w}, {s.left} {s.op} {s.right} = {s.result}." for w, s in zip(words, steps))
    return f"{body} Finally, the answer is \\boxed{{{steps[-1].result}}}."


def code_trace(steps: tuple[Step, ...], variable: str = "total") -> str:
    """A python block that computes the steps (each result as a comment), then 'The answer is \\boxed{N}.'."""
    lines = [f"{variable} = {steps[0].left}"]
    for s in steps:
        lines.append(f"{variable} = {variable} {s.op} {s.right}  # {s.result}")
    code = "\n".join(lines + [f"print({variable})"])
    return f"```python\n{code}\n```\nThe answer is \\boxed{{{steps[-1].result}}}."


def trace(problem: Problem, style: Style, steps: tuple[Step, ...] | None = None) -> str:
    return (code_trace if style == "code" else language_trace)(steps if steps is not None else problem.steps)


def code_probability_of(problem: Problem, code_probability: float | None) -> float:
    """p(code) for `problem`: `code_probability` itself, or the problem template's value when it is None."""
    if code_probability is not None:
        return code_probability
    return next(t for t in TEMPLATES if t.name == problem.template).code_probability


def corpus_trace(problem: Problem, rng: random.Random, slips: Slips,
                 code_probability: float | None) -> tuple[Style, str]:
    """A corpus trace: style code with `code_probability_of(problem, code_probability)`, else language; a
    slipped step's wrong result is carried on into the later steps, so the boxed answer is wrong too."""
    style: Style = "code" if rng.random() < code_probability_of(problem, code_probability) else "language"
    steps: list[Step] = []
    carried: int | None = None
    for s in problem.steps:
        step = s if carried is None else _apply(carried, s.op, s.right)
        if has_carry_or_borrow(step) and slips.carry(style) > 0 and rng.random() < slips.carry(style):
            step = _forgotten_carry(step)
        elif rng.random() < slips.random:
            step = _random_slip(step, rng)
        carried = step.result
        steps.append(step)
    return style, trace(problem, style, tuple(steps))
