"""Per-response behavior features: correctness, code reasoning, reasoning keywords, format, length; and beside
ours the papers' definitions, named after them (../shared/REFERENCES.md): Rethink_RLVR's code flag and
boxed-extractable format flag (Shao et al., arXiv 2506.10947), the Noisy Rewards paper's reasoning pattern
reward RPR (Lv et al., arXiv 2505.22653).

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
from collections import Counter
from fractions import Fraction

from math_verify import parse, verify

# Overridable (`dynamics probe behavior --keywords`): phrases of step-by-step natural-language reasoning.
REASONING_KEYWORDS: tuple[str, ...] = (
    "First, I need to", "Let me", "Let's", "Step 1", "Next,", "Then,", "Finally", "Therefore", "So the answer",
    "We need to", "I need to",
)

# RPR's phrases exactly as `think_reward` spells them (trestad/Noisy-Rewards-in-Learning-to-Reason,
# verl/utils/reward_score/math_score.py): 40, trailing spaces and the misspelt "makes sence" included.
RPR_PHRASES: tuple[str, ...] = (
    "i need to", "we need to", "wait", "alternatively", "let me check", "let me see", "let's focus on",
    "we know that", "we can observe ", "we can see ", "let me try", "let's try", "let us try", "first, ",
    "firstly, ", "next, ", "finally, ", "let us first", "let's first", "let me first", "try again", "still not",
    "not working", "not correct", "does not work", "doesn't work", "makes sence", "since we ", "because we ",
    "consequently", "as a result", "thus", "therefore", "hence", "so that", "thereby", "if we", "given there ",
    "for instance ", "for example ",
)
RPR_FULL_SCORE_PHRASES = 20
RPR_NGRAM = 20
RPR_THINK_TAG = "Assistant: <think> "

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


def extract_boxed_answer(response: str) -> str | None:
    """The boxed answer as the papers' code extracts it (lm-eval-harness's `last_boxed_only_string` +
    `remove_boxed`, as in the Noisy Rewards repo's math_utils): with a `\\boxed ` (space form) anywhere, the
    text after the last one up to `$`; else the contents of the last `\\boxed`, which must open a `{` that
    closes (balanced braces; the contents may be empty). None otherwise (no box, unclosed, `\\boxed` not
    followed by `{`: their code raises or returns None there)."""
    if "\\boxed " in response:
        return response.split("\\boxed ")[-1].split("$")[0]
    start = response.rfind("\\boxed")
    if start < 0 or not response.startswith("{", start + len("\\boxed")):
        return None
    contents = _boxed_contents(response[start:])
    return contents[0] if contents else None


def boxed_answer_extractable(response: str) -> bool:
    """Rethink_RLVR's format reward as a flag: a boxed answer can be extracted (`extract_boxed_answer` is not
    None; an empty `\\boxed{}` counts, unlike our `has_boxed_answer`)."""
    return extract_boxed_answer(response) is not None


def mentions_python(response: str) -> bool:
    """Rethink_RLVR's code-reasoning flag: "python" appears in the lowercased response (so a sentence about
    Python counts and an untagged code block does not, unlike our `uses_code_reasoning`)."""
    return "python" in response.lower()


def ngram_repetition_ratio(text: str, n: int = RPR_NGRAM) -> float:
    """Distinct whitespace-word n-grams that occur more than once / all n-grams (0 with fewer than n words)."""
    words = text.split()
    ngrams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(ngrams.values())
    return sum(1 for count in ngrams.values() if count > 1) / total if total else 0.0


def reasoning_pattern_reward(response: str) -> float:
    """The Noisy Rewards paper's RPR (`think_reward` in its code), on the lowercased text after
    "Assistant: <think> " (the whole response without that tag): min(1, #RPR_PHRASES present / 20) − the
    20-gram repetition ratio − the number of "user: " (a self-posed next question), floored at 0; and 0 when no
    non-empty boxed answer can be extracted (`extract_boxed_answer`). Their code, missing the tag, also drops
    the response's first 18 characters (find() = −1); we keep them."""
    if not extract_boxed_answer(response):
        return 0.0
    tag = response.find(RPR_THINK_TAG.strip())
    text = (response[tag + len(RPR_THINK_TAG):] if tag >= 0 else response).lower()
    presence = min(1.0, sum(phrase in text for phrase in RPR_PHRASES) / RPR_FULL_SCORE_PHRASES)
    return max(0.0, presence - ngram_repetition_ratio(text) - text.count("user: "))


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
