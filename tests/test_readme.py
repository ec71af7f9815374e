"""The README's promises (issue 12): its tensor snippet runs as written, the examples take the CLI's
``--output``, ``timeripple --help`` does not import torch, the schedule text matches the schedule."""

import os
import re
import subprocess
import sys

import pytest

import timeripple

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _section(title):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_tensor_snippet_runs_as_written(capsys):
    (snippet,) = _section("Use it on tensors")
    exec(compile(snippet, "README.md", "exec"), {})
    assert 0 < float(capsys.readouterr().out.strip()) <= 1


def test_examples_take_output_like_the_cli():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import _common

    args = _common.parse_args("x", "m", "wan2.1", ["--output", "videos"])
    assert args.output == "videos"
    assert _common.parse_args("x", "m", "wan2.1", ["--out", "old"]).output == "old"  # the old name still works


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["calibrate", "--help"]])
def test_cli_help_does_not_import_torch(argv):
    code = ("import sys\nfrom timeripple.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)" % argv)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_schedule_text_at_two_steps():
    for name in timeripple.list_configs():  # the README: only open_sora_plan is dense at step 0 of 2
        first = timeripple.load_config(name).threshold_at(0, 2)
        assert (first is None) == (name == "open_sora_plan"), name
