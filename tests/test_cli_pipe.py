"""`reportgen analyses | head`: a reader that closes the pipe early ends the command quietly (no BrokenPipeError)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_into(write_fd: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reportgen", *args], stdout=write_fd, stderr=subprocess.PIPE,
                          text=True, timeout=120)


def test_a_closed_pipe_ends_quietly():
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first line: every write to stdout fails with EPIPE
    try:
        proc = run_into(w, "analyses")
    finally:
        os.close(w)
    assert proc.stderr == "" and proc.returncode == 1  # click's status for a closed output pipe


def test_an_open_pipe_gets_everything():
    r, w = os.pipe()
    with os.fdopen(r) as reader:
        proc = run_into(w, "analyses")
        os.close(w)
        lines = reader.read().splitlines()
    assert proc.returncode == 0 and proc.stderr == ""
    from click.testing import CliRunner

    from reportgen.cli import main

    assert lines == CliRunner().invoke(main, ["analyses"]).output.splitlines() and len(lines) > 10
