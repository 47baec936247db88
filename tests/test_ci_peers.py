"""Comparisons with peer libraries never skip silently under CI=true (issue 27): a test skipped by
`pytest.importorskip` fails there (the hook in conftest.py), and every module the tests import that way is installed
by the README's test command, which CI runs as written (.ci/run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

from conftest import TESTS

ROOT = TESTS.parent
# the distribution that installs each peer module the tests ask for with pytest.importorskip
PEERS = {"pytorch_grad_cam": "grad-cam", "timm": "timm", "transformers": "transformers", "captum": "captum",
         "zennit": "zennit", "torchcam": "torchcam", "pycocotools": "pycocotools"}
IN_REPOSITORY = {"models_zoo"}  # packages of this checkout: importable from its root, nothing to install

PROBE = '''
import pytest

def test_needs_a_peer():
    pytest.importorskip("no_such_peer_library_here")

def test_skips_for_another_reason():
    pytest.skip("not about a peer")
'''


def run_probe(tmp_path, ci: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", "-p", "conftest",
                           "test_probe.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_missing_peer_fails_under_ci_and_other_skips_stay_skips(tmp_path):
    ci = run_probe(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout
    assert "1 failed, 1 skipped" in ci.stdout
    assert "FAILED test_probe.py::test_needs_a_peer - CI=true: this test needs a peer library that is not installed " \
           "(could not import 'no_such_peer_library_here'" in ci.stdout


def test_the_readme_test_command_installs_every_peer_the_tests_import():
    asked = set()
    for path in set(TESTS.glob("*.py")) - {TESTS / "test_ci_peers.py"}:  # this file's probe asks for no peer
        asked |= set(re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", path.read_text()))
    asked = {name.split(".")[0] for name in asked}
    assert "pytorch_grad_cam" in asked  # the 24 CAM comparisons
    unknown = asked - set(PEERS) - IN_REPOSITORY
    assert not unknown, f"add the distribution of {sorted(unknown)} to PEERS and to the README's test command"
    readme = (ROOT / "README.md").read_text()
    command = readme.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    installed = set(re.findall(r"[A-Za-z][\w.-]*", command)) | {re.split(r"[<>=!~\[; ]", req)[0] for req in extra}
    assert "[test]" in command
    missing = {PEERS[name] for name in asked & set(PEERS)} - installed
    assert not missing, f"the README's test command does not install {sorted(missing)}"
