"""Behavior features on hand-written responses."""

import threading

import pytest

from probes.features import (
    REASONING_KEYWORDS,
    RPR_PHRASES,
    answers_match,
    boxed_answer_extractable,
    extract_boxed_answer,
    final_answer,
    has_boxed_answer,
    is_correct,
    keyword_hits,
    mentions_python,
    ngram_repetition_ratio,
    reasoning_pattern_reward,
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


# The papers' definitions (../shared/REFERENCES.md) ------------------------------------------------------------

@pytest.mark.parametrize("response", ["I will check this with Python.", "```python\nprint(3)\n```", "PYTHON: 3"])
def test_rethink_rlvr_code_flag_positive(response):
    assert mentions_python(response)


@pytest.mark.parametrize("response", ["apples = 7\napples += 5\nprint(apples)", "```py\nprint(1)\n```", "Let me add."])
def test_rethink_rlvr_code_flag_negative(response):
    assert not mentions_python(response)


def test_the_two_code_rules_disagree_where_their_definitions_differ():
    prose_about_python = "The for loop in Python is used for iteration, as in many languages."
    untagged_code = "apples = 7\napples += 5\nprint(apples)"
    assert mentions_python(prose_about_python) and not uses_code_reasoning(prose_about_python)
    assert uses_code_reasoning(untagged_code) and not mentions_python(untagged_code)


@pytest.mark.parametrize("response, answer", [
    ("so \\boxed{\\frac{1}{2}} it is", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{}", ""),
    ("the answer is $\\boxed 5$.", "5"),
])
def test_boxed_answer_extraction_positive(response, answer):
    assert extract_boxed_answer(response) == answer and boxed_answer_extractable(response)


@pytest.mark.parametrize("response", ["\\boxed{12", "no box here, 12", "\\boxed{1} and then \\boxed", "\\fbox{3}"])
def test_boxed_answer_extraction_negative(response):
    assert extract_boxed_answer(response) is None and not boxed_answer_extractable(response)


def test_empty_box_is_extractable_for_rethink_rlvr_but_not_our_format():
    assert boxed_answer_extractable("\\boxed{}") and not has_boxed_answer("\\boxed{}")


def test_rpr_has_the_papers_forty_phrases():
    assert len(RPR_PHRASES) == len(set(RPR_PHRASES)) == 40


def test_rpr_counts_phrase_presence_over_twenty():
    # "wait", "let me check", "first, ", "we need to", "thus": 5 / 20; repeated phrases count once.
    response = "Wait, let me check. First, we need to add; thus, wait, thus \\boxed{7}"
    assert reasoning_pattern_reward(response) == pytest.approx(5 / 20)


def test_rpr_is_capped_at_one():
    response = " ".join(RPR_PHRASES) + " \\boxed{1}"
    assert ngram_repetition_ratio(response.lower()) == 0.0
    assert reasoning_pattern_reward(response) == 1.0


def test_rpr_subtracts_the_twenty_gram_repetition_ratio():
    # 40 × "wait" + the box: 41 words, 22 20-grams, of which one distinct 20-gram repeats → 1/22.
    response = "wait " * 40 + "\\boxed{1}"
    assert ngram_repetition_ratio(response, 20) == pytest.approx(1 / 22)
    assert reasoning_pattern_reward(response) == pytest.approx(1 / 20 - 1 / 22)
    assert ngram_repetition_ratio("too few words", 20) == 0.0


def test_rpr_is_zero_without_a_boxed_answer_or_with_a_self_posed_question():
    assert reasoning_pattern_reward("Wait, let me check. First, we need to add; thus 7") == 0.0
    assert reasoning_pattern_reward("Wait, let me check. Thus \\boxed{}") == 0.0  # nothing extracted
    assert reasoning_pattern_reward("Wait, thus \\boxed{2}. User: what is 3 + 3?") == 0.0


def test_rpr_reads_only_the_text_after_the_think_tag():
    assert reasoning_pattern_reward("Wait, thus. Assistant: <think> the sum is \\boxed{3}") == 0.0
    assert reasoning_pattern_reward("Assistant: <think> Wait, the sum is \\boxed{3}") == pytest.approx(1 / 20)
