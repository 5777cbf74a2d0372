"""Per-response behavior features: correctness, code reasoning, reasoning keywords, format, length.

Verifier: the `math-verify` package (Hugging Face's answer checker, offline, sympy-based) decides equivalence
of the extracted final answer and the reference ("1/2" = "\\frac{1}{2}" = "0.5"). Plain numbers (integers,
decimals, a/b fractions) are compared first as exact rationals, which is what math-verify concludes for them
too (tested) and ~250× faster (~5 µs against ~1.3 ms per check here), so training-loop rewards stay cheap. math-verify's
timeouts use SIGALRM, which only exists in the main thread: there they are on (5 s); in other threads they
are off.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

from math_verify import parse, verify

# Overridable (`dynamics probe behavior --keywords`): phrases of step-by-step natural-language reasoning.
REASONING_KEYWORDS: tuple[str, ...] = (
    "First, I need to", "Let me", "Let's", "Step 1", "Next,", "Then,", "Finally", "Therefore", "So the answer",
    "We need to", "I need to",
)

VERIFIER = "math-verify 0.9 (exact-rational fast path for plain numbers)"
_TIMEOUT_S = 5

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")
_PLAIN_NUMBER = re.compile(r"^\s*-?(\d+(\.\d*)?|\.\d+)(\s*/\s*\d+)?\s*$")
_FENCED_PYTHON = re.compile(r"```[ \t]*(python|py|python3)\b", re.IGNORECASE)
_ASSIGNMENT = re.compile(r"^\s*[A-Za-z_]\w*(\[[^\]]*\])?\s*(=|\+=|-=|\*=|/=|//=)\s*[^=\s]")
_KEYWORD_STATEMENT = re.compile(
    r"^\s*(print\(.*\)\s*$|def\s+\w+\s*\(.*\)\s*(->.*)?:\s*$|import\s+\w|from\s+\w+\s+import\s|"
    r"for\s+\w+(\s*,\s*\w+)*\s+in\s+.+:\s*$|while\s+.+:\s*$|if\s+.+:\s*$|return\b)")

logging.getLogger("math_verify").setLevel(logging.ERROR)


def _boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` with balanced braces, in order (an unclosed one is ignored)."""
    out = []
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                out.append(text[start:i])
                break
    return out


def final_answer(response: str) -> str | None:
    """The last non-empty `\\boxed{...}` (balanced braces), else the last number in the text, else None."""
    boxed = [b.strip() for b in _boxed_contents(response) if b.strip()]
    if boxed:
        return boxed[-1]
    numbers = _NUMBER.findall(response)
    return numbers[-1].replace(",", "") if numbers else None


def has_boxed_answer(response: str) -> bool:
    """Format: the response contains a `\\boxed{}` with non-blank content."""
    return any(b.strip() for b in _boxed_contents(response))


def _as_fraction(text: str) -> Fraction | None:
    if not _PLAIN_NUMBER.match(text):
        return None
    try:
        return Fraction(text.replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str, reference: str) -> bool:
    """Exact rational equality for plain numbers, else math-verify's symbolic equivalence."""
    p, r = _as_fraction(predicted), _as_fraction(reference)
    if p is not None and r is not None:
        return p == r
    timeout = _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"${reference}$", parsing_timeout=timeout)
    guess = parse(f"\\boxed{{{predicted}}}", parsing_timeout=timeout)
    return bool(gold and guess and verify(gold, guess, timeout_seconds=timeout))


def is_correct(response: str, answer: str) -> bool:
    """The response's final answer (see `final_answer`) equals the reference answer; no answer → False."""
    predicted = final_answer(response)
    return predicted is not None and answers_match(predicted, str(answer))


def uses_code_reasoning(response: str) -> bool:
    """The response reasons with Python code: it has a fenced block tagged python/py/python3, or at least two
    Python-looking statement lines of which one is a keyword statement (`print(...)`, `def f(...):`, `import`,
    `for x in ...:`, `while ...:`, `if ...:`, `return`) — assignments alone (`total = 7`) are not enough, and a
    line must start with the statement, so prose math ("3 + 4 = 7") and the word "print" in a sentence do not
    count."""
    if _FENCED_PYTHON.search(response):
        return True
    lines = response.splitlines()
    keyword_lines = sum(bool(_KEYWORD_STATEMENT.match(line)) for line in lines)
    assignment_lines = sum(bool(_ASSIGNMENT.match(line)) for line in lines)
    return keyword_lines >= 1 and keyword_lines + assignment_lines >= 2


def keyword_hits(response: str, keywords: tuple[str, ...] = REASONING_KEYWORDS) -> dict[str, int]:
    """Occurrences of each keyword phrase in the response (case-insensitive, non-overlapping)."""
    lowered = response.lower()
    return {k: lowered.count(k.lower()) for k in keywords}


def response_length(response: str, tokenizer=None) -> int:
    """Length in tokens of `tokenizer` (no special tokens) when given, else in whitespace-separated words."""
    if tokenizer is None:
        return len(response.split())
    return len(tokenizer(response, add_special_tokens=False)["input_ids"])
