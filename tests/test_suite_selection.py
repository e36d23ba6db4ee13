"""The suite leaves the tests marked slow out (pyproject's addopts: -m 'not slow'), unless asked for them."""
import pytest

from conftest import names_tests_only


@pytest.mark.parametrize("args, runs_what_it_names", [
    (["tests/test_train.py::test_ddp_resume_restores_every_ranks_random_state"], True),
    (["-q", "tests/test_train.py::test_ddp_a_failed_rank_stops_the_others", "tests/test_a.py::test_b[1-2]"], True),
    (["tests/"], False),                                          # the suite: slow tests stay out
    ([], False),
    (["tests/test_geometry.py", "tests/test_train.py::test_ddp_resume"], False),   # a file too
    (["-m", "not slow", "tests/test_train.py::test_ddp_resume"], False),           # its own -m wins
    (["-mgpu", "tests/test_train.py::test_ddp_resume"], False),
    (["--maxfail=1", "tests/test_train.py::test_ddp_resume"], True),
])
def test_a_command_line_naming_tests_runs_them_slow_or_not(args, runs_what_it_names):
    assert names_tests_only(args) is runs_what_it_names


def test_this_session_left_the_slow_tests_out_or_was_asked(request):
    """pyproject.toml's addopts hold -m 'not slow'; this session's -m is that, or what its command line asked."""
    expression = request.config.option.markexpr
    if names_tests_only(request.config.invocation_params.args):
        assert expression == ""
    elif not any(arg.startswith("-m") and not arg.startswith("--") for arg in request.config.invocation_params.args):
        assert expression == "not slow"
