import json
import sys

import pytest

import ahead
from unet_fast import cli, geometry


def test_sizes_table(capsys):
    assert cli.main(["sizes", "--depth", "5", "--max-size", "600"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:]]
    assert [int(r[0]) for r in rows] == geometry.valid_input_sizes(5, 600)
    assert ["572", "388"] == rows[[r[0] for r in rows].index("572")][:2]


def test_sizes_same_padding(capsys):
    assert cli.main(["sizes", "--depth", "3", "--padding", "same", "--max-size", "12"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(int(a), int(b)) for a, b, _ in rows] == [(4, 4), (8, 8), (12, 12)]


def test_sizes_nothing_legal(capsys):
    assert cli.main(["sizes", "--depth", "5", "--max-size", "100"]) == 1
    assert "smallest is 188" in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [(["sizes", "--depth", "0"], "--depth"), (["sizes", "--max-size", "-3"], "--max-size"),
                                         (["frobnicate"], "frobnicate")])
def test_bad_arguments_exit_with_usage(argv, named, capsys):
    """argparse's own errors: exit status 2 and one line naming the argument and pointing to --help."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "--help" in err and len(err.strip().splitlines()) == 1


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"torch", "backends", "devices", "extension"} <= set(report)


# a process of its own, started ahead, beside the suite (tests/ahead.py)
AS_MODULE = ahead.Command("cli-as-module", lambda folder: ([sys.executable, "-m", "unet_fast.cli", "info"], {}, None),
                          timeout=120)


@AS_MODULE.mark
def test_console_entry_point_runs_as_module():
    done = AS_MODULE.result().done
    assert done.returncode == 0, done.stderr
    assert "backends:" in done.stdout


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`unet-fast sizes | head -2` printed "error: [Errno 32] Broken pipe" and exited 1."""
    import subprocess

    process = subprocess.Popen([sys.executable, "-m", "unet_fast.cli", "sizes", "--depth", "3", "--max-size",
                                "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()                       # as head does after its lines
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and first.startswith(b"depth 3") and err == "", err
