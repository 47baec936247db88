"""A mistyped name or path is reported before torch is imported and the model loaded (issue 27).

Importing torch alone takes 5 to 10 s on a loaded machine, so a typo reported after it costs the user that long. The
commands run in a fresh interpreter, which then says whether torch was imported: the reliable stand-in for "reported
in about a second" (a wall-clock limit would be flaky on a shared machine). The messages are the loaders' own, with
a did-you-mean where a known name is close.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# every command in one interpreter per call; prints one JSON line per command: exit code, output, torch imported
SCRIPT = """
import json, sys
from click.testing import CliRunner
from reportgen.cli import main
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, args)
    print(json.dumps({"code": result.exit_code, "output": result.output.strip(), "torch": "torch" in sys.modules}))
"""


def run_fresh(commands: list[list[str]], cwd: Path) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(commands)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_typos_are_reported_before_torch_is_imported(tmp_path):
    out = str(tmp_path / "site")
    (tmp_path / "typo.toml").write_text('[analysis.grad-kam]\nlayer = "conv1"\n')
    (tmp_path / "param.toml").write_text('[analysis.grad-cam]\nlayerr = "conv1"\n')
    (tmp_path / "a-file").write_text("not a folder")
    cases = [
        (["--only", "grad-camm"], "--only: unknown analysis 'grad-camm' (did you mean 'grad-cam'?); known: "),
        (["--skip", "predictons"], "--skip: unknown analysis 'predictons' (did you mean 'predictions'?)"),
        (["--config", "typo.toml"], "analysis.grad-kam: unknown analysis (did you mean 'grad-cam'?)"),
        (["--config", "param.toml"], "analysis.grad-cam.layerr: unknown key (did you mean 'layer'?)"),
        (["--images", "no-such-folder"], "image path 'no-such-folder' does not exist"),
        (["--images", "zoo:lenet-digit"], "unknown zoo data set 'lenet-digit'"),
        (["--weights", "no-such.pt"], "weights file 'no-such.pt' does not exist"),
        (["lenet-digit"], "model spec 'lenet-digit' names nothing (did you mean lenet-digits?)"),
    ]
    commands = [["build", *args, "--out", out] for args, _ in cases]
    commands.append(["build", "--out", str(tmp_path / "a-file")])
    commands.append(["layers", "shapes-cn"])
    results = run_fresh(commands, tmp_path)
    expected = [fragment for _, fragment in cases] + ["is a file, not a folder",
                                                      "model spec 'shapes-cn' names nothing (did you mean shapes-cnn"]
    for command, fragment, r in zip(commands, expected, results):
        assert r["code"] == 2 and len(r["output"].splitlines()) == 1 and "Traceback" not in r["output"], (command, r)
        assert fragment in r["output"], (command, r)
        assert not r["torch"], f"{command}: torch was imported before the mistake was reported"
    assert not (tmp_path / "site").exists()


def test_an_unknown_name_far_from_every_known_one_gets_no_guess(tmp_path):
    (r,) = run_fresh([["build", "--only", "zzzz", "--out", str(tmp_path / "site")]], tmp_path)
    assert "unknown analysis 'zzzz'; known: " in r["output"] and "did you mean" not in r["output"]


def test_a_job_of_several_processes_leaves_the_checks_to_the_build(monkeypatch, tmp_path):
    """Under torchrun every rank runs the CLI: a mistake found here would be said once per rank, so the checks wait
    for the distributed build, where rank 0 alone says it (`reportgen.distributed`)."""
    import pytest

    from reportgen.cli import check_early
    from reportgen.config import load_config
    from reportgen.errors import ConfigError

    cfg = load_config(None, only=["grad-camm"], out=str(tmp_path / "site"))
    with pytest.raises(ConfigError, match="did you mean 'grad-cam'"):
        check_early(cfg)
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    check_early(cfg)  # nothing said on this rank
