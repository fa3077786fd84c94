"""``load_env_file``: the dotenv format users write, and errors that name file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import ContractError
from runner.targets.dotenv import MAX_ENV_FILE_BYTES, load_env_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stage.env"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_usual_forms(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# model credentials\n"
        "\n"
        "export OPENAI_API_KEY=sk-test-123\n"
        "OPENAI_MODEL = gpt-4o-mini   # inline comment\n"
        "HF_TOKEN='hf_$literal # not a comment'\n"
        'GREETING="line one\\nline two \\"quoted\\""\n'
        'MULTI="first\n'
        'second"\n'
        "URL=http://host:8000/v1#frag\n"
        "EMPTY=\n"
        "OPENAI_MODEL=override-wins\n",
    )
    assert load_env_file(path) == {
        "OPENAI_API_KEY": "sk-test-123",
        "OPENAI_MODEL": "override-wins",
        "HF_TOKEN": "hf_$literal # not a comment",
        "GREETING": 'line one\nline two "quoted"',
        "MULTI": "first\nsecond",
        "URL": "http://host:8000/v1#frag",
        "EMPTY": "",
    }


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "win.env"
    path.write_bytes(b"\xef\xbb\xbfA=1\r\nB='two'\r\n")
    assert load_env_file(path) == {"A": "1", "B": "two"}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("A=1\njust words\n", 2, "expected KEY=VALUE"),
        ("A=1\n\n1BAD=x\n", 3, "invalid variable name"),
        ("MY-KEY=x\n", 1, "invalid variable name"),
        ('A="never closed\nB=2\n', 1, 'unterminated " quote'),
        ("A='x' trailing\n", 1, "unexpected text after the closing quote"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ContractError) as info:
        load_env_file(path)
    assert info.value.line == line
    assert info.value.file == str(path)
    assert message in str(info.value)
    assert f"{path}:{line}" in str(info.value)


def test_missing_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="env file not found"):
        load_env_file(tmp_path / "absent.env")
    big = write(tmp_path, "A=" + "x" * MAX_ENV_FILE_BYTES + "\n")
    with pytest.raises(ContractError, match="larger than"):
        load_env_file(big)
    binary = tmp_path / "bin.env"
    binary.write_bytes(b"A=\xff\xfe\n")
    with pytest.raises(ContractError, match="cannot read env file"):
        load_env_file(binary)
