"""``timeripple eval`` on the command line: ``--help`` imports no torch, bad arguments exit with code 2 and a
message before any model is loaded, and one tiny run (1 prompt, 2 steps, 1 method) writes its files."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timeripple.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def test_help_imports_no_torch():
    code = ("import sys\nfrom timeripple.cli import main\ntry:\n    main(['eval', '--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    for words in ("--methods", "--levels", "--prompts-file", "--seeds", "--steps", "--search-runs", "--device",
                  "--output", "--quick", "token-budget", "magnitude"):
        assert words in done.stdout, words


@pytest.mark.parametrize("argv, words", [
    (["--methods", "chanel"], ["'chanel'", "valid: channel, token-strict", "did you mean 'channel'"]),
    (["--levels", "1.5"], ["must be a saving in (0, 1)"]),
    (["--levels", "abc"], ["is not a number"]),
    (["--quick", "--search-runs", "5"], ["--search-runs", "<= the number of runs (2)"]),
    (["--prompts-file", "/nonexistent/prompts.txt"], ["--prompts-file", "is not a file"]),
    (["--import", "no_such_module_xyz"], ["--import", "cannot be imported"]),
    (["--steps", "1"], ["below the minimum 2"]),
    (["--tol", "0"], ["--tol", "(0, 0.5)"]),
])
def test_bad_arguments_exit_2_with_a_message(argv, words):
    code, out, err = run_cli("eval", *argv)
    assert code == 2 and not out
    for w in words:
        assert w in err, (w, err)


def test_a_tiny_run_writes_its_files(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# one prompt\na cyan circle moving left quickly on a maroon background\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli("eval", "--prompts-file", str(prompts), "--seeds", "0", "--steps", "2",
                                "--methods", "magnitude", "--levels", "0.5", "--guidance-scale", "1",
                                "--capture-steps", "1", "--capture-layers", "1", "--no-progress",
                                "--output", str(out))
    assert code == 0, err
    assert "| magnitude (q·kᵀ products) |" in stdout
    data = json.loads((out / "results.json").read_text())
    (row,) = data["rows"]
    assert row["converged"] and abs(row["savings_reusing"] - 0.5) <= 0.005
    assert data["settings"]["prompts"] == ["a cyan circle moving left quickly on a maroon background"]
    assert (out / "results.md").is_file() and (out / "quality_vs_savings.png").is_file()
