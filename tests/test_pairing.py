import pytest
import torch

from dynamics.errors import PairingError
from dynamics.pairing import compare_dtype, pair_tensors
from tests.memory_checkpoint import memory_checkpoint


def _ckpts():
    a = memory_checkpoint({
        "w": torch.zeros(2, 3), "only_a": torch.zeros(1), "s": torch.zeros(4), "d": torch.zeros(2, dtype=torch.float32),
        "ids": torch.zeros(3, dtype=torch.int64),
    }, "A")
    b = memory_checkpoint({
        "w": torch.zeros(2, 3), "only_b": torch.zeros(1), "s": torch.zeros(5), "d": torch.zeros(2, dtype=torch.bfloat16),
        "ids": torch.zeros(3, dtype=torch.int64),
    }, "B")
    return a, b


def test_unpaired_tensors_are_listed_not_dropped():
    pairs, unpaired = pair_tensors(*_ckpts())
    assert [p.name for p in pairs] == ["w", "d"]
    assert unpaired.only_a == ["only_a"] and unpaired.only_b == ["only_b"]
    assert unpaired.shape_mismatch == [{"name": "s", "shape_a": [4], "shape_b": [5]}]
    assert unpaired.dtype_mismatch == [{"name": "d", "dtype_a": "float32", "dtype_b": "bfloat16", "compared_as": "float32"}]
    assert unpaired.not_float == ["ids"]


def test_strict_turns_the_first_problem_into_an_error_naming_file_and_tensor():
    with pytest.raises(PairingError, match=r"B: missing tensor only_a"):
        pair_tensors(*_ckpts(), strict=True)


def test_strict_shape_mismatch_names_tensor():
    a = memory_checkpoint({"s": torch.zeros(4)}, "A")
    b = memory_checkpoint({"s": torch.zeros(5)}, "B")
    with pytest.raises(PairingError, match=r"B: tensor s: shape \[5\] differs"):
        pair_tensors(a, b, strict=True)


def test_strict_dtype_mismatch_names_tensor():
    a = memory_checkpoint({"d": torch.zeros(4)}, "A")
    b = memory_checkpoint({"d": torch.zeros(4, dtype=torch.float16)}, "B")
    with pytest.raises(PairingError, match=r"B: tensor d: dtype float16 differs from float32"):
        pair_tensors(a, b, strict=True)


@pytest.mark.parametrize("a, b, expected", [
    (torch.float32, torch.float32, torch.float32),
    (torch.float32, torch.bfloat16, torch.float32),
    (torch.float16, torch.float32, torch.float32),
    (torch.bfloat16, torch.float16, torch.float32),
])
def test_compare_dtype(a, b, expected):
    assert compare_dtype(a, b) == expected
