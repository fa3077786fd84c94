"""A contract that writes outside its repo: the host's $HOME, /root, /etc, absolute host paths.

Destructive commands run only in ``evaluate()``, after ``rollout()`` has proven isolation:
sandbox.json says docker and canaries written inside are absent on the host. Every attack
script also refuses to run where a host-only guard file is visible.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from runner.trust.evidence import RUNNER_ROOT_IN_SANDBOX, runner_package_dir
from tests.contract_repos import ROLLOUT, make_repo
from tests.hostile import assert_in_docker, docker_setup, file_digest, labelled_containers

pytestmark = pytest.mark.docker

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""Host files mounted read-only into every sandbox: the CA bundle and the runner's helpers."""


def test_writes_outside_the_repo_change_nothing_on_the_host(
    tmp_path: Path, default_image: str
) -> None:
    tok = uuid.uuid4().hex[:12]
    name = f"fsm-hostile-{tok}"
    home = Path.home()
    guard = tmp_path / "HOST_ONLY_GUARD"
    guard.write_text("only the host sees this file\n")
    canaries = [Path("/root") / f"{name}-canary", tmp_path / "canary" / f"{name}-canary"]
    victim_file = tmp_path / "victim.txt"
    victim_file.write_text("original\n")
    victim_dir = tmp_path / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("keep\n")
    watched = [
        home / ".bashrc",
        home / ".profile",
        home / ".ssh" / "authorized_keys",
        Path("/etc/hosts"),
        Path("/etc/hostname"),
        CA_BUNDLE,
    ]
    before = {p: file_digest(p) for p in watched}

    canary_cmds = "".join(f"mkdir -p {c.parent}\necho inside > {c}\n" for c in canaries)
    repo = tmp_path / "repo"
    attack = textwrap.dedent(f"""\
        set -u
        test ! -e {guard} || {{ echo 'guard file visible: this is the host, refusing'; exit 99; }}
        echo pwned > /root/{name}
        echo pwned > "$HOME/{name}"
        echo pwned > {home}/{name}
        echo 'echo pwned' >> {home}/.bashrc
        echo 'echo pwned' >> {home}/.profile
        mkdir -p {home}/.ssh && echo 'ssh-ed25519 AAAAhostile hostile@attacker' >> {home}/.ssh/authorized_keys
        mkdir -p {tmp_path} && echo pwned > {victim_file}
        rm -rf {victim_dir}
        mkdir -p {repo} && echo pwned > {repo}/README.md
        echo pwned > /etc/{name}
        echo '203.0.113.9 pwned.example' >> /etc/hosts
        echo pwned >> {CA_BUNDLE} 2>/dev/null && echo "WRITABLE ca bundle"
        test -f {RUNNER_ROOT_IN_SANDBOX}/runner/__init__.py && echo "EVIDENCE helpers mounted"
        touch {RUNNER_ROOT_IN_SANDBOX}/runner/{name} 2>/dev/null && echo "WRITABLE runner helpers"
        echo "EVIDENCE $(cat /root/{name} {victim_file} /etc/{name} {repo}/README.md | tr '\\n' ' ')"
        test -e {victim_dir} || echo "EVIDENCE victim_dir removed"
        echo '{{"ok": true, "score": 1}}' > .aider_fsm/metrics.json
        """)
    make_repo(repo, rollout=canary_cmds + textwrap.dedent(ROLLOUT), evaluation=attack)
    readme = (repo / "README.md").read_text()

    sess = docker_setup(repo)
    roll = sess.rollout(llm="m", repair_iters=0)
    assert roll.ok, roll.reason
    # Proof of isolation before anything destructive runs.
    assert_in_docker(sess, *canaries)

    res = sess.evaluate(repair_iters=0)
    assert res.ok, res.reason
    assert res.verify.evaluation is not None
    out = res.verify.evaluation.results[0].stdout
    # The attack really ran (inside): every write succeeded there.
    assert out.count("pwned") >= 4 and "victim_dir removed" in out, out
    assert "helpers mounted" in out and "WRITABLE" not in out, out  # read-only mounts held

    assert guard.exists()
    for path in (
        Path("/root") / name,
        home / name,
        Path("/etc") / name,
        runner_package_dir() / name,
    ):
        assert not path.exists(), f"{path} was written on the host"
    assert victim_file.read_text() == "original\n"
    assert (victim_dir / "keep.txt").read_text() == "keep\n"
    assert (repo / "README.md").read_text() == readme
    assert {p: file_digest(p) for p in watched} == before
    assert labelled_containers(sess.run_id) == []
