"""The samples JSONL file a rollout leaves behind: the model of one line and its checker.

Every line must be a valid sample (the predecessor skipped bad lines and passed on one
non-empty line, notes/predecessor.md 14.2). The checker streams: a multi-GiB file is
read in blocks with memory bounded by the longest allowed line, and the common case
(a well-formed line) is checked without building a model, about 1.9x faster than a
model per line (docs/performance.md, samples_validation). outputs.py imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Annotated

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from runner.errors import ContractError

__all__ = [
    "LENIENT_CONFIG",
    "MAX_SAMPLE_LINE_BYTES",
    "Sample",
    "SamplesReport",
    "first_error",
    "validate_samples_jsonl",
]

#: One sample line may carry a long completion, but memory must stay bounded.
MAX_SAMPLE_LINE_BYTES = 32 * 1024 * 1024

#: Stage outputs may carry keys of their own (id, answer, ...): allowed, kept, frozen.
LENIENT_CONFIG = ConfigDict(extra="allow", frozen=True, use_attribute_docstrings=True)


def first_error(exc: ValidationError) -> tuple[str, str]:
    """The dotted field and message of a validation error's first complaint."""
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"])
    return field, str(err["msg"]).removeprefix("Value error, ")


class Sample(BaseModel):
    """One line of the samples JSONL. Extra keys (id, answer, ...) are allowed."""

    model_config = LENIENT_CONFIG
    prompt: StrictStr
    """The prompt sent to the model."""
    completion: StrictStr
    """The model's completion."""
    reward: Annotated[float, Field(strict=True, allow_inf_nan=False)]
    """Finite number; booleans, strings, NaN and infinities are refused."""


class SamplesReport(BaseModel):
    """What a valid samples file contained."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)
    path: str
    """The samples file that was read."""
    samples: int
    """Number of lines, all valid."""
    blank_completions: int
    """Samples whose completion is empty or whitespace."""
    reward_min: float | None
    """Smallest reward (None without samples)."""
    reward_max: float | None
    """Largest reward."""
    reward_mean: float | None
    """Mean reward."""


def validate_samples_jsonl(
    path: Path,
    *,
    min_samples: int = 1,
    max_line_bytes: int = MAX_SAMPLE_LINE_BYTES,
    opener: Callable[[], AbstractContextManager[IO[bytes]]] | None = None,
) -> SamplesReport:
    """Check every line of a samples JSONL file, streaming (memory bounded by one line).

    ``opener`` reads the file from elsewhere (a sandbox's ``open_file``) for a file too
    big to copy out; ``path`` then only names it in messages.

    Raises:
        ContractError: missing or empty file; the first bad line (file and 1-based line:
            blank, too long, bad JSON or UTF-8, not an object, missing/ill-typed field,
            non-finite reward); fewer than ``min_samples``; all completions blank.
    """
    count = blank = 0
    total = 0.0
    low = high = None
    try:
        with opener() if opener is not None else path.open("rb") as fh:
            for batch, terminated in _line_batches(fh, max_line_bytes):
                for raw in batch:
                    count += 1
                    if len(raw) > max_line_bytes:
                        raise _bad_line(path, count, f"line is longer than {max_line_bytes} bytes")
                    if count == 1:
                        raw = raw.removeprefix(_BOM)
                    # Fast path, inlined (this loop runs once per sample): parse with the
                    # JSON parser Sample.model_validate_json uses (jiter, same accepted
                    # syntax and values) and check the three fields by exact type. Anything
                    # it does not clearly accept goes through the model, which either
                    # accepts it too or raises the usual message.
                    try:
                        data = _from_json(raw)
                    except ValueError:
                        data = None
                    reward = completion = None
                    if type(data) is dict:
                        completion = data.get("completion")
                        reward = data.get("reward")
                        if type(data.get("prompt")) is not str or type(completion) is not str:
                            reward = None
                        elif type(reward) is int and -_EXACT_INT <= reward <= _EXACT_INT:
                            reward = float(reward)  # as the model converts it
                        elif type(reward) is not float or not _isfinite(reward):
                            reward = None
                    if reward is None or completion is None:
                        sample = _checked_sample(path, count, raw + b"\n" if terminated else raw)
                        reward, completion = sample.reward, sample.completion
                    total += reward
                    if low is None or high is None:
                        low = high = reward
                    elif reward < low:
                        low = reward
                    elif reward > high:
                        high = reward
                    if not completion or completion.isspace():  # == not completion.strip()
                        blank += 1
    except FileNotFoundError as exc:
        raise ContractError(f"samples_jsonl_not_found: {path}", file=path) from exc
    except OSError as exc:
        raise ContractError(f"failed_to_read_samples_jsonl: {exc}", file=path) from exc
    if count == 0 and min_samples > 0:
        raise ContractError("samples_jsonl_empty: the file has no samples", file=path)
    if count < min_samples:
        raise ContractError(
            f"samples_jsonl_too_few: expected>={min_samples} got={count}", file=path
        )
    if count and blank == count:
        raise ContractError(
            "samples_jsonl_all_empty_completions: every completion is blank", file=path
        )
    return SamplesReport(
        path=str(path),
        samples=count,
        blank_completions=blank,
        reward_min=low,
        reward_max=high,
        reward_mean=total / count if count else None,
    )


_BOM = b"\xef\xbb\xbf"
#: Read size of the samples reader: big enough to amortise the per-read cost, small
#: enough that a block and its split lines stay well under the memory budget.
_BLOCK_BYTES = 256 * 1024
#: Integers up to 2**53 convert to float exactly; larger ones (where float() could round
#: differently or overflow) go through the model.
_EXACT_INT = 2**53
_from_json = pydantic_core.from_json
_isfinite = math.isfinite


def _line_batches(fh: IO[bytes], limit: int) -> Iterator[tuple[list[bytes], bool]]:
    """Yield the lines of ``fh`` in batches, without their ``\\n``, and whether they had one.

    Lines are split on ``\\n`` only (as ``readline`` does). A line longer than ``limit``
    is yielded cut to ``limit + 1`` bytes as soon as that is known, and reading stops:
    memory stays bounded by ``limit`` plus one block, however long the line.
    """
    pieces: list[bytes] = []  # the start of a line that spans blocks
    size = 0
    while block := fh.read(_BLOCK_BYTES):
        lines = block.split(b"\n")
        tail = lines.pop()
        if lines:
            if pieces:
                pieces.append(lines[0])
                lines[0] = b"".join(pieces)
                pieces, size = [], 0
            yield lines, True
        if tail:
            pieces.append(tail)
            size += len(tail)
            if size > limit:
                yield [b"".join(pieces)[: limit + 1]], False
                return
    if pieces:
        yield [b"".join(pieces)], False


def _checked_sample(path: Path, line: int, raw: bytes) -> Sample:
    """The model's verdict on one line, as a ContractError naming the line and field."""
    if not raw.strip():
        raise _bad_line(path, line, "blank line (every line must be a sample)")
    try:
        return Sample.model_validate_json(raw)
    except ValidationError as exc:
        field, msg = first_error(exc)
        raise _bad_line(path, line, msg, field or None) from exc


def _bad_line(path: Path, line: int, message: str, field: str | None = None) -> ContractError:
    return ContractError(
        f"samples_jsonl_invalid_line: {message}", file=path, line=line, field=field
    )
