"""Output locations are checked before any checkpoint is read: one line on stderr, exit 2, no traceback."""

import pytest

from dynamics import api
from dynamics.cli import main
from dynamics.documents import check_output, write_json_document
from dynamics.errors import OutputError


@pytest.fixture
def no_reads(monkeypatch):
    """Any diff or checkpoint open fails the test: the output check must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was opened before the output location was checked")

    monkeypatch.setattr(api, "open_checkpoint", refuse)
    monkeypatch.setattr(api, "diff", refuse)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dynamics: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("flag", ["--json", "--h5"])
def test_diff_refuses_an_output_under_a_file_before_reading(tmp_path, capsys, no_reads, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = blocker / "out.json"
    assert main(["diff", "missing-base", "missing-tuned", flag, str(target)]) == 2
    err = _one_line_error(capsys)
    assert str(target) in err and "is not a folder" in err and "missing-base" not in err


def test_diff_refuses_an_output_that_is_a_folder(tmp_path, capsys, no_reads):
    assert main(["diff", "missing-base", "missing-tuned", "--json", str(tmp_path)]) == 2
    assert "is a folder" in _one_line_error(capsys)


def test_report_refuses_an_output_folder_that_is_a_file(tmp_path, capsys, no_reads):
    blocker = tmp_path / "report"
    blocker.write_text("")
    assert main(["report", "three-gate", "missing-base", "missing-tuned", "-o", str(blocker)]) == 2
    assert f"{blocker}: cannot write: not a folder" in _one_line_error(capsys)


def test_check_output_accepts_missing_folders_and_existing_files(tmp_path):
    check_output(tmp_path / "new" / "deeper" / "out.json")
    check_output(tmp_path / "new-folder", folder=True)
    (tmp_path / "old.json").write_text("{}")
    check_output(tmp_path / "old.json")
    check_output(tmp_path, folder=True)


def test_a_failing_write_is_one_output_error_and_leaves_no_temporary_file(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="a-file/out.json: cannot write"):
        write_json_document({"schema": "x"}, blocker / "out.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
