"""README is what a newcomer follows: the data set-up before the two commands, the two commands
CI runs, and what happens without the data mirror, as the code does it."""
import os
import re
import subprocess
import sys

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _blocks(section: str) -> list[str]:
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", body, re.S)]


def test_the_two_commands_set_up_then_run_the_main_job_and_the_tests():
    main, tests = _blocks("The two commands")
    setup = 'python3.11 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'
    assert main == f"{setup} && dvc repro" and tests == f"{setup} && pytest"
    ci = (REPO / ".ci/run").read_text(encoding="utf-8")
    assert tests in ci  # CI runs the README's test command, not a variant of it


def test_the_data_mirror_is_explained_before_the_two_commands_with_a_path_of_the_users_own():
    assert README.index("GENLAB_DATA_DIR") < README.index("## The two commands")
    (export,) = _blocks("Before the two commands: the data")
    assert export.startswith("export GENLAB_DATA_DIR=") and "shared" not in export.split("#")[0]


def test_without_the_mirror_the_corpus_tests_skip_as_readme_says():
    """README: without GENLAB_DATA_DIR the tests that need the real corpus skip; under CI they fail."""
    assert "skip" in README.split("## The two commands")[0]
    env = {k: v for k, v in os.environ.items() if k not in ("GENLAB_DATA_DIR", "CI")}
    test = "tests/test_vectorize.py::test_book_figures_on_full_nietzsche"
    run = lambda extra: subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", test],  # noqa: E731
                                       cwd=REPO, env={**env, **extra}, capture_output=True, text=True, timeout=300)
    skipped = run({})
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    failed = run({"CI": "true"})
    assert failed.returncode != 0 and "GENLAB_DATA_DIR is not set" in failed.stdout, failed.stdout[-2000:]


def test_dvc_staging_files_by_itself_is_said_beside_the_everyday_commands():
    """`core.autostage` makes `dvc repro` run `git add` on what it writes: kept only where README
    says so where a user reads the commands."""
    import configparser

    dvc = configparser.ConfigParser()
    dvc.read(REPO / ".dvc/config")
    if dvc.getboolean("core", "autostage", fallback=False):
        everyday = README.split("## Everyday commands\n", 1)[1].split("\n## ", 1)[0]
        assert "autostage" in everyday and "git status" in everyday
