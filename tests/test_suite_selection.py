"""The suite leaves the tests marked slow out (pyproject's addopts: -m 'not slow'), unless asked for them."""
import pytest

from conftest import names_tests_only

RESUME = "tests/test_train.py::test_ddp_resume_restores_every_ranks_random_state"


@pytest.mark.parametrize("paths, args, runs_what_it_names", [
    ([RESUME], [RESUME], True),
    ([RESUME, "tests/test_a.py::test_b[1-2]"], ["-q", RESUME, "tests/test_a.py::test_b[1-2]"], True),
    ([RESUME], ["-p", "no:cacheprovider", "-n", "2", "-k", "resume", RESUME], True),   # options' values
    (["tests"], [], False),                                           # the suite: slow tests stay out
    (["tests/"], ["tests/"], False),
    (["tests/test_geometry.py", RESUME], ["tests/test_geometry.py", RESUME], False),   # a file too
    ([RESUME], ["-m", "not slow", RESUME], False),                    # its own -m wins
    ([RESUME], ["-mgpu", RESUME], False),
    ([RESUME], ["--maxfail=1", RESUME], True),
])
def test_a_command_line_naming_tests_runs_them_slow_or_not(paths, args, runs_what_it_names):
    assert names_tests_only(paths, args) is runs_what_it_names


def test_this_session_left_the_slow_tests_out_or_was_asked(request):
    """pyproject.toml's addopts hold -m 'not slow'; this session's -m is that, or what its command line asked."""
    config = request.config
    if names_tests_only(config.args, config.invocation_params.args):
        assert config.option.markexpr == ""
    elif not any(arg.startswith("-m") and not arg.startswith("--") for arg in config.invocation_params.args):
        assert config.option.markexpr == "not slow"
