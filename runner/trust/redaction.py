"""Secret redaction: what counts as a secret, and masking it in text, bytes and objects.

Kept apart from the run-dir writer so the rules for "is this a secret?" live in one
place; :class:`runner.runs.run_dir.RunDir` owns a :class:`SecretRedactor` and passes every
text it writes through it, and :func:`mask_env` serves records that show an environment.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping

MIN_SECRET_LEN = 4
ALWAYS_SECRET_LEN = 6
"""A registered value this long is masked whatever it looks like, digits included (issue
15 item 10: ``DB_PASSWORD=839201746553`` stayed readable because numbers were skipped)."""
REDACTED = "***"

_SECRET_KEY_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASS", "PWD")
# The shell's working directories match "PWD" but are paths, and masking a path would
# mangle every log line that mentions it.
_NOT_SECRET_KEYS = frozenset({"PWD", "OLDPWD"})
# Values that keys like OPENAI_API_KEY=EMPTY (vLLM) or TOKENIZERS_PARALLELISM=false carry:
# masking them everywhere would garble logs ("localhost" -> "***host") and hide nothing.
_PLACEHOLDERS = frozenset(
    {"none", "null", "true", "false", "local", "dummy", "empty", "unset"}
    | {"disabled", "enabled", "auto"}
)
_NUMERIC_RE = re.compile(r"[\d.]+")
_TOKEN_PREFIXES = r"(?:sk-|hf_|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-|xox[abprs]-)"
_TOKEN_VALUE_RE = re.compile(rf"(?:Bearer\s+)?({_TOKEN_PREFIXES}[A-Za-z0-9_\-]{{8,}})")
# Well-known token shapes are masked even when nobody registered them (a key read from a
# .env inside the sandbox, say). Long minimum lengths keep "sk-learn" and "hf_hub" intact.
_TOKEN_TEXT = (
    r"\b(?:sk-[A-Za-z0-9_\-]{20,}|hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,})"
)
_TOKEN_TEXT_RE = re.compile(_TOKEN_TEXT)
_TOKEN_BYTES_RE = re.compile(_TOKEN_TEXT.encode())


def _secret_pattern(secret: str) -> str:
    """A secret's regex. A number is matched only as a whole number: cutting
    ``18392017465539`` or ``839201746553.5`` in the middle would corrupt JSON and hide
    no secret."""
    if _NUMERIC_RE.fullmatch(secret):
        return rf"(?<!\d)(?<!\d\.){re.escape(secret)}(?!\d)(?!\.\d)"
    return re.escape(secret)


def secret_key(name: str) -> bool:
    """A variable whose name says it holds a secret (``*KEY*``, ``*TOKEN*``, ``*PASSWORD*``...)."""
    upper = name.upper()
    return upper not in _NOT_SECRET_KEYS and any(part in upper for part in _SECRET_KEY_PARTS)


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a record: values of secret-looking keys become ``***`` (placeholders stay)."""
    return {
        k: REDACTED
        if secret_key(k)
        and len(v.strip()) >= MIN_SECRET_LEN
        and v.strip().lower() not in _PLACEHOLDERS
        else v
        for k, v in env.items()
    }


class SecretRedactor:
    """The secrets registered so far and their compiled patterns; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._secrets: set[str] = set()
        self._text_re: re.Pattern[str] | None = None
        self._bytes_re: re.Pattern[bytes] | None = None

    def add_secret(self, value: str) -> None:
        """Mask ``value`` from now on.

        Every value of ALWAYS_SECRET_LEN (6) characters or more is masked, numbers
        included. Shorter ones only when they are at least MIN_SECRET_LEN long and
        neither a placeholder (``none``, ``false``...) nor a number: masking ``1024``
        everywhere would garble every log and hide nothing.
        """
        core = value.strip()
        if len(core) < ALWAYS_SECRET_LEN and (
            len(core) < MIN_SECRET_LEN
            or core.lower() in _PLACEHOLDERS
            or _NUMERIC_RE.fullmatch(core)
        ):
            return
        # The JSON-escaped form is what a secret containing quotes or backslashes looks
        # like inside a serialised object.
        variants = {value, core, json.dumps(core, ensure_ascii=False)[1:-1]}
        with self._lock:
            self._secrets.update(v for v in variants if len(v) >= MIN_SECRET_LEN)
            self._text_re = self._bytes_re = None

    def add_secrets_from_env(self, env: Mapping[str, str]) -> None:
        """Register values of secret-looking keys (the predecessor's list) and token-shaped values."""
        for key, value in env.items():
            if secret_key(key):
                self.add_secret(value)
            token = _TOKEN_VALUE_RE.fullmatch(value.strip())
            if token:
                self.add_secret(value)
                self.add_secret(token.group(1))

    def longest_secret_bytes(self) -> int:
        """UTF-8 length of the longest registered secret (0 if none): the chunk overlap a scrub needs."""
        with self._lock:
            return max((len(s.encode()) for s in self._secrets), default=0)

    def _patterns(self) -> tuple[re.Pattern[str] | None, re.Pattern[bytes] | None]:
        with self._lock:
            if self._text_re is None and self._secrets:
                # Longest first: a secret that is a prefix of another must not leave a tail.
                ordered = sorted(self._secrets, key=len, reverse=True)
                self._text_re = re.compile("|".join(map(_secret_pattern, ordered)))
                self._bytes_re = re.compile(b"|".join(_secret_pattern(s).encode() for s in ordered))
            return self._text_re, self._bytes_re

    def redact(self, text: str) -> str:
        """Every registered secret and every well-known token shape becomes ``***``."""
        text_re, _ = self._patterns()
        if text_re is not None:
            text = text_re.sub(REDACTED, text)
        return _TOKEN_TEXT_RE.sub(REDACTED, text)

    def redact_bytes(self, data: bytes) -> bytes:
        """:meth:`redact` for raw bytes (secrets matched in their UTF-8 form)."""
        _, bytes_re = self._patterns()
        if bytes_re is not None:
            data = bytes_re.sub(REDACTED.encode(), data)
        return _TOKEN_BYTES_RE.sub(REDACTED.encode(), data)

    def is_secret_number(self, value: object) -> bool:
        """A JSON number that is, as written, a registered secret (a PIN in metrics, say)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        with self._lock:
            return bool(self._secrets) and str(value) in self._secrets

    def redact_name(self, name: str) -> str:
        """A file or folder name with secrets masked; never empty, ``.`` or ``..``."""
        clean = self.redact(name).replace("/", "_")
        return clean if clean not in ("", ".", "..") else REDACTED

    def redact_obj(self, obj: object) -> object:
        """:meth:`redact` on every string (keys too) of a JSON-like object; collections become lists.

        A number that is itself a secret becomes the string ``***``, so the object
        stays valid JSON (masking the serialised text would leave ``"pin": ***``).
        """
        if isinstance(obj, str):
            return self.redact(obj)
        if self.is_secret_number(obj):
            return REDACTED
        if isinstance(obj, Mapping):
            return {
                (self.redact(k) if isinstance(k, str) else k): self.redact_obj(v)
                for k, v in obj.items()
            }
        if isinstance(obj, list | tuple | set | frozenset):
            return [self.redact_obj(v) for v in obj]
        return obj
