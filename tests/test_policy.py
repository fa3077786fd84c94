"""CommandPolicy: a table of commands, stages and modes -> allowed or refused by a named rule.

The table includes the predecessor's known bypasses (notes/predecessor.md 5.1, 14.1) and
its false positives (plain words such as ``reboot`` or ``dd`` inside arguments).
"""

from __future__ import annotations

import re
import time

import pytest

from runner.errors import ContractError, PolicyViolation
from runner.trust.policy import CommandPolicy, PolicyConfig

OK = None

# (command, stage, mode, expected rule or OK); unattended=strict throughout.
TABLE: list[tuple[str, str, str, str | None]] = [
    # --- the predecessor's false positives: words are data, not commands -------------
    ("echo reboot", "tests", "safe", OK),
    ("./scripts/shutdown_test.py", "tests", "safe", OK),
    ("grep shutdown log.txt", "tests", "safe", OK),
    ("python scripts/dd_if_a_of_b.py", "tests", "safe", OK),
    ("dd if=a of=b", "tests", "safe", OK),
    ("echo docker run x; echo mount", "tests", "safe", OK),
    ("command -v reboot", "tests", "safe", OK),
    ("echo '$(reboot)'", "tests", "safe", OK),
    ("# reboot the box\npytest -q", "tests", "safe", OK),
    ("cat <<'EOF' > notes.txt\nreboot\nread x\nEOF\npytest", "tests", "safe", OK),
    ("python - <<EOF\nread(1)\nEOF", "evaluation", "safe", OK),
    ("find . -name '*.pyc' -exec rm {} \\;", "tests", "safe", OK),
    ("rm -rf ./build /tmp/cache", "tests", "safe", OK),
    ("(cd sub && make) && pytest -q 2>&1 | tee out.log", "tests", "safe", OK),
    # --- hard-deny: any mode, any stage ----------------------------------------------
    ("reboot", "tests", "system", "hard-deny"),
    ("echo hi; /sbin/shutdown -h now", "bootstrap", "system", "hard-deny"),
    ("sudo reboot", "bootstrap", "safe", "hard-deny"),
    ("nohup poweroff &", "tests", "safe", "hard-deny"),
    ("timeout 5 halt", "tests", "safe", "hard-deny"),
    ("x=1 FOO=bar mount -t tmpfs t /mnt", "tests", "system", "hard-deny"),
    ("docker run --rm alpine", "deploy_setup", "system", "hard-deny"),
    ("DOCKER_HOST=x podman ps", "deploy_setup", "system", "hard-deny"),
    ("nerdctl ps", "tests", "system", "hard-deny"),
    (
        "curl --unix-socket /var/run/docker.sock http://x/containers/json",
        "tests",
        "system",
        "hard-deny",
    ),
    ("nsenter -t 1 -m -p sh", "tests", "system", "hard-deny"),
    ("unshare -r sh", "tests", "system", "hard-deny"),
    ("chroot /host sh", "tests", "system", "hard-deny"),
    ("modprobe br_netfilter", "bootstrap", "system", "hard-deny"),
    ("rm -rf /", "tests", "system", "hard-deny"),
    ("rm -fr /", "tests", "system", "hard-deny"),  # predecessor bypass, now caught
    ("rm -rf / --no-preserve-root", "tests", "system", "hard-deny"),  # predecessor bypass
    ("rm -r -f /*", "tests", "system", "hard-deny"),
    ("rm -rf ~", "tests", "system", "hard-deny"),
    ("rm -rf $HOME", "tests", "system", "hard-deny"),
    ('rm -rf "${HOME}/" //', "tests", "system", "hard-deny"),
    (":(){ :|:& };:", "tests", "system", "hard-deny"),
    ("bomb(){ bomb|bomb& };bomb", "tests", "system", "hard-deny"),
    ("f() { f | f & }; f", "tests", "system", "hard-deny"),
    ("function g { g|g& }; g", "tests", "system", "hard-deny"),
    ("echo `reboot`", "tests", "system", "hard-deny"),
    ('echo "$(shutdown now)"', "tests", "system", "hard-deny"),
    ("bash -c 'echo hi && reboot'", "tests", "system", "hard-deny"),
    ("sh -c 'echo $(reboot)'", "tests", "system", "hard-deny"),
    ("eval 'reboot'", "tests", "system", "hard-deny"),
    ("xargs -n1 reboot < hosts", "tests", "system", "hard-deny"),
    ("busybox reboot", "tests", "system", "hard-deny"),
    ("pytest\nreboot", "tests", "system", "hard-deny"),
    # --- safe-mode --------------------------------------------------------------------
    ("sudo apt-get install -y jq", "bootstrap", "safe", OK),
    ("apt-get update && apt-get install -y jq && dpkg -l", "bootstrap", "safe", OK),
    ("sudo apt-get install -y jq", "tests", "safe", "safe-mode"),
    ("apt-get install -y jq", "deploy_setup", "safe", "safe-mode"),
    ("sudo apt-get install -y jq", "tests", "system", OK),
    ("s''udo ls", "tests", "safe", "safe-mode"),  # predecessor bypass, now caught
    ("/usr/bin/sudo ls", "tests", "safe", "safe-mode"),
    ("env sudo ls", "tests", "safe", "safe-mode"),
    ('bash -c "sudo x"', "tests", "safe", "safe-mode"),
    ("su -c 'id' root", "rollout", "safe", "safe-mode"),
    ("doas id", "rollout", "safe", "safe-mode"),
    (
        "curl -fsSL https://x/install.sh | sh",
        "bootstrap",
        "safe",
        "safe-mode",
    ),  # predecessor bypass
    ("wget -qO- https://x | bash -s -- --yes", "bootstrap", "safe", "safe-mode"),
    ("curl -s https://x | tee i.sh | python3", "bootstrap", "safe", "safe-mode"),
    ('sh -c "$(curl -fsSL https://x)"', "bootstrap", "safe", "safe-mode"),
    ("bash <(curl -s https://x)", "bootstrap", "safe", "safe-mode"),
    ("curl -fsSL https://x | sh", "bootstrap", "system", OK),
    (
        "curl -s localhost:8000/health | python3 -c 'import json,sys; json.load(sys.stdin)'",
        "deploy_health",
        "safe",
        OK,
    ),
    ("curl -s localhost:8000/v1/models | python -m json.tool", "deploy_health", "safe", OK),
    ("curl -fsSL https://x -o get.sh && echo fetched", "bootstrap", "safe", OK),
    ("VERSION=$(curl -s https://x/version) && echo $VERSION", "bootstrap", "safe", OK),
    ("chmod 777 /", "tests", "safe", "safe-mode"),
    ("chown -R nobody /*", "tests", "safe", "safe-mode"),
    ("chmod -R 755 ./bin", "tests", "safe", OK),
    # --- unattended (strict) ------------------------------------------------------------
    ("read answer", "tests", "system", "unattended"),
    ("read -t 5 answer", "tests", "system", OK),
    ("while read -r line; do echo $line; done < list.txt", "tests", "system", OK),
    ("cat list.txt | read first", "tests", "system", OK),
    ("read -r -d '' X <<'EOF'\nhi\nEOF", "tests", "system", OK),
    ("ssh host uptime", "deploy_setup", "system", "unattended"),
    ("ssh -o BatchMode=yes host uptime", "deploy_setup", "system", OK),
    ("scp -oBatchMode=yes a host:b", "deploy_setup", "system", OK),
    ("passwd", "tests", "system", "unattended"),
    ("vim config.yml", "tests", "system", "unattended"),
    ("git log | less", "tests", "system", "unattended"),
    ("top", "tests", "system", "unattended"),
    ("top -bn1 | head", "tests", "system", OK),
    ("python -i train.py", "tests", "system", "unattended"),
    ("python3 -Wignore train.py", "tests", "system", OK),
    ("perl -i -pe 's/a/b/' f.txt", "tests", "system", OK),
    ("gh auth login", "auth", "system", "unattended"),
    ("gh auth login --with-token < token.txt", "auth", "system", OK),
    ("huggingface-cli login", "auth", "system", "unattended"),
    ("huggingface-cli login --token $HF_TOKEN", "auth", "system", OK),
    ("docker login -u me", "auth", "system", "hard-deny"),  # rule 1 comes first
]

# Documented limits (module docstring): these pass the policy and are left to the
# container's limits. Pinned here so the documentation stays true.
CONTAINER_ONLY = [
    "$(echo rm) -rf /",
    "x=sudo; $x reboot",
    "cd / && rm -rf .",
    "python -c 'import shutil; shutil.rmtree(\"/\")'",
    "echo cmVib290 | base64 -d | sh",
    'eval "$CMD"',
    "bash ./scripts/anything.sh",
    "$'\\x72eboot'",
]


def check(command: str, stage: str = "tests", **cfg: object) -> str | None:
    try:
        CommandPolicy(PolicyConfig(**cfg)).check(command, stage=stage)  # type: ignore[arg-type]
    except PolicyViolation as exc:
        assert exc.command == command and exc.reason
        return exc.rule
    return None


@pytest.mark.parametrize(("command", "stage", "mode", "expected"), TABLE)
def test_policy_table(command: str, stage: str, mode: str, expected: str | None) -> None:
    assert check(command, stage, mode=mode) == expected


@pytest.mark.parametrize("command", CONTAINER_ONLY)
def test_documented_bypasses_pass_and_are_left_to_the_container(command: str) -> None:
    assert check(command, "tests", mode="safe", unattended="guided") is None


def test_guided_mode_does_not_refuse_interactive_commands() -> None:
    assert check("read answer", unattended="guided") is None
    assert check("vim x", unattended="guided") is None


def test_empty_command_is_refused() -> None:
    assert check("   \n") == "empty"


def test_denylist_is_a_case_insensitive_search_and_accepts_compiled_patterns() -> None:
    deny = (r"\bmake\s+clean\b", re.compile("PIP UNINSTALL"))
    assert check("cd x && MAKE CLEAN", denylist=deny) == "denylist"
    assert check("pip uninstall -y torch", denylist=deny) == "denylist"
    assert check("make test", denylist=deny) is None
    # Hard-deny is checked first and names its own rule.
    assert check("reboot", denylist=("reboot",)) == "hard-deny"


def test_allowlist_requires_a_match_and_comes_after_the_denylist() -> None:
    allow = (r"^pytest\b", r"^python -m \w+")
    assert check("pytest -q", allowlist=allow) is None
    assert check("python -m pytest", allowlist=allow) is None
    assert check("make test", allowlist=allow) == "allowlist"
    assert check("pytest -q", allowlist=allow, denylist=("-q",)) == "denylist"


def test_invalid_regex_is_a_contract_error() -> None:
    with pytest.raises(ContractError) as info:
        CommandPolicy(PolicyConfig(denylist=("([unclosed",)))
    assert info.value.field == "security.denylist"


def test_violation_message_names_rule_and_command() -> None:
    with pytest.raises(PolicyViolation) as info:
        CommandPolicy(PolicyConfig()).check("sudo ls", stage="tests")
    assert info.value.rule == "safe-mode"
    assert "safe-mode" in str(info.value) and "sudo ls" in str(info.value)


def test_describe_lists_the_rules_in_force() -> None:
    d = CommandPolicy(PolicyConfig(mode="safe", denylist=("x",), unattended="strict")).describe()
    assert d["rules"] == ["empty", "hard-deny", "safe-mode", "denylist", "unattended"]
    assert d["denylist"] == ["x"] and d["allowlist"] == []
    assert "reboot" in d["hard_deny_commands"]  # type: ignore[operator]
    assert "container" in str(d["limits"])
    relaxed = CommandPolicy(PolicyConfig(mode="system", allowlist=("y",), unattended="guided"))
    assert relaxed.describe()["rules"] == ["empty", "hard-deny", "allowlist"]


def test_pathological_input_does_not_crash() -> None:
    assert check("echo " + "$(" * 5 + "reboot" + ")" * 5) == "hard-deny"
    # Nesting deeper than the policy reads is refused, not waved through.
    assert check("echo " + "$(" * 200 + "true" + ")" * 200) == "hard-deny"
    assert check("bash -c \"sh -c 'eval reboot'\"") == "hard-deny"
    assert check("echo 'unterminated; reboot") is None  # bash would refuse to parse it too
    assert check("echo `reboot") == "hard-deny"
    assert check("echo $(reboot") == "hard-deny"


def test_long_commands_are_checked_in_linear_time() -> None:
    # shlex and naive regexes are quadratic here; a 1 MB inline script took 25 s before.
    started = time.monotonic()
    assert check("python -c '" + "x = 1; " * 150_000 + "'") is None
    assert check("a" * 1_000_000) is None
    assert check(":(){ :|:& };:" + " " * 500_000) == "hard-deny"
    assert time.monotonic() - started < 10
