"""Behavior features on hand-written responses."""

import threading

import pytest

from probes.features import (
    REASONING_KEYWORDS,
    answers_match,
    final_answer,
    has_boxed_answer,
    is_correct,
    keyword_hits,
    response_length,
    uses_code_reasoning,
)

CODE_POSITIVE = [
    "```python\nx = 3 + 4\nprint(x)\n```\nThe answer is \\boxed{7}.",
    "```py\nprint(12 * 3)\n```\n\\boxed{36}",
    "Let me compute.\n```Python\ntotal = sum([1, 2, 3])\n```",
    "apples = 7\napples += 5\nprint(apples)",
    "def solve():\n    return 3 * 4\nprint(solve())",
    "for i in range(3):\n    total = total + i",
    "import math\nr = math.sqrt(16)",
]
CODE_NEGATIVE = [
    "First, I need to add 3 and 4. 3 + 4 = 7. Finally, the answer is \\boxed{7}.",
    "We print the result on paper: print(it) is not something we do here.\nSo 3 + 4 = 7.",
    "total = 7\nanswer = 7",  # assignments alone
    "x = 3, so 2x = 6. Therefore \\boxed{6}.",
    "```\nsome plain text in a fence\n```",
    "If the train leaves at 3: it arrives at 5.",
    "The for loop in Python is used for iteration, as in many languages.",
]


@pytest.mark.parametrize("response", CODE_POSITIVE)
def test_code_reasoning_positive(response):
    assert uses_code_reasoning(response)


@pytest.mark.parametrize("response", CODE_NEGATIVE)
def test_code_reasoning_negative(response):
    assert not uses_code_reasoning(response)


def test_final_answer_takes_last_nonempty_boxed_with_nested_braces():
    assert final_answer("\\boxed{1} then \\boxed{\\frac{1}{2}} and \\boxed{ }") == "\\frac{1}{2}"


def test_final_answer_falls_back_to_last_number_without_thousands_commas():
    assert final_answer("it costs 1,234 dollars, not 5.5 or 7") == "7"
    assert final_answer("it costs 5.5 dollars, not 1,234") == "1234"
    assert final_answer("no digits here") is None


def test_unclosed_boxed_is_no_format():
    assert not has_boxed_answer("\\boxed{12")
    assert not has_boxed_answer("\\boxed{}")
    assert has_boxed_answer("\\boxed{12}")


@pytest.mark.parametrize("predicted,reference,expected", [
    ("12", "12", True), ("12.0", "12", True), ("1/2", "0.5", True), ("-3", "3", False), ("12", "13", False),
    ("\\frac{1}{2}", "0.5", True), ("x+1", "1+x", True), ("\\sqrt{4}", "2", True), ("\\pi", "3", False),
])
def test_answers_match(predicted, reference, expected):
    assert answers_match(predicted, reference) is expected


@pytest.mark.parametrize("a,b", [("12", "12.0"), ("3/4", "0.75"), ("-2", "-2"), ("7", "8"), ("0.1", "1/10")])
def test_fast_path_agrees_with_math_verify(a, b):
    from math_verify import parse, verify

    assert answers_match(a, b) == verify(parse(f"${b}$"), parse(f"\\boxed{{{a}}}"))


def test_is_correct_needs_an_answer():
    assert is_correct("so \\boxed{7}", "7")
    assert is_correct("the result is 7", "7")
    assert not is_correct("I don't know", "7")


def test_verifier_works_off_the_main_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(is_correct("\\boxed{\\frac{1}{2}}", "0.5")))
    thread.start()
    thread.join()
    assert results == [True]


def test_keyword_hits_are_case_insensitive_counts():
    hits = keyword_hits("Let me think. let me add. Finally done.", ("Let me", "Finally", "Step 1"))
    assert hits == {"Let me": 2, "Finally": 1, "Step 1": 0}
    assert "First, I need to" in REASONING_KEYWORDS


def test_length_in_words_or_tokens():
    assert response_length("a b  c\nd") == 4

    class CharTokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(text)}

    assert response_length("abc", CharTokenizer()) == 3
