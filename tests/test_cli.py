"""The command line is built from the stage list: every stage is a subcommand with its options,
`all` runs them in order with the search applied, and bad input gets one line and exit code 2."""
from __future__ import annotations

import dataclasses
import os

import pytest

from loradrift import cli, stages
from loradrift.config import load_profile


def test_every_stage_is_a_subcommand_with_task_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    assert [s.name for s in stages.STAGES] == ["setup", "bench", "search", "train", "drift", "deploy", "timing"]
    assert set(sub.choices) == {s.name for s in stages.STAGES} | {"status", "all"}
    for name in ("drift", "deploy", "search", "all", "train"):
        task = next(a for a in sub.choices[name]._actions if a.dest == "task")
        assert task.help, name
    all_help = next(a.help for a in sub._choices_actions if a.dest == "all")
    assert all(s.name in all_help for s in stages.STAGES), all_help


def test_all_runs_every_stage_in_order_and_applies_the_search(tiny_profile, monkeypatch):
    calls = []
    fakes = [dataclasses.replace(s, run=lambda prof, n=s.name, **kw: calls.append((n, kw.get("apply"))))
             for s in stages.STAGES]
    monkeypatch.setattr(stages, "STAGES", fakes)
    args = cli.build_parser().parse_args(["all", "--profile", str(tiny_profile)])
    cli.cmd_all(load_profile(str(tiny_profile)), args)
    assert [c[0] for c in calls] == ["setup", "bench", "search", "train", "drift", "deploy", "timing"]
    assert calls[2][1] == str(tiny_profile)  # the search writes its values into this profile's file
    assert all(c[1] is None for i, c in enumerate(calls) if i != 2)


def test_a_stage_gets_its_options(tiny_profile, monkeypatch):
    seen = {}
    monkeypatch.setattr(stages, "STAGES", [dataclasses.replace(s, run=lambda prof, **kw: seen.update(kw))
                                           if s.name == "train" else s for s in stages.STAGES])
    assert cli.main(["train", "--profile", str(tiny_profile), "--task", "rte", "--method", "lora",
                     "--seed", "3", "--force"]) == 0
    assert seen["tasks"] == ["rte"] and seen["methods"] == ["lora"] and seen["seeds"] == [3] and seen["force"]


@pytest.mark.parametrize("argv,message", [
    (["status", "--profile", "nope"], "unknown profile 'nope'"),
    (["train", "--profile", "cpu", "--task", "cola"], "unknown task 'cola'"),
    (["train", "--profile", "cpu", "--method", "ia3"], "unknown method 'ia3'"),
    (["drift", "--profile", "cpu", "--task", "cola"], "unknown task 'cola'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_cli_makes_idle_openmp_threads_sleep_unless_told_otherwise():
    """OMP_WAIT_POLICY must be set before torch loads OpenMP: the CLI module sets a default and keeps the user's."""
    import subprocess
    import sys
    code = "import os; import loradrift.cli; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "ACTIVE"
