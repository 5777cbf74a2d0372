"""The generations jsonl format: defaults, round trip, one-line errors naming file and line."""

import pytest

from probes.generations import Generation, GenerationsError, read_generations, reward_family, write_generations


def test_round_trip_and_defaults(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"prompt": "2+3?", "response": "5", "answer": 5, "extra": 1}\n\n')
    (g,) = read_generations(path)
    assert (g.prompt_id, g.answer, g.run, g.step, g.reward, g.decoding) == ("2+3?", "5", "run", 0, "none", "greedy")
    write_generations([g, Generation("q", "r", step=3, reward="noisy-0.2")], tmp_path / "h.jsonl")
    assert [x.step for x in read_generations(tmp_path / "h.jsonl")] == [0, 3]


@pytest.mark.parametrize("line,needle", [
    ('{"prompt": "q"}', "'prompt' and 'response'"),
    ('{"prompt": "q", "response": "r", "reward": "bogus"}', "reward 'bogus'"),
    ('{"prompt": "q", "response": "r", "step": "ten"}', ":1:"),
    ("[1, 2]", "'prompt' and 'response'"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, needle):
    path = tmp_path / "g.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(GenerationsError, match=needle) as info:
        read_generations(path)
    assert str(path) in str(info.value)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(GenerationsError, match="cannot read"):
        read_generations(tmp_path / "absent.jsonl")


def test_reward_family():
    assert reward_family("noisy-0.3") == "noisy" and reward_family("true") == "true"
