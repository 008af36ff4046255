"""The project's checks, one command: `nox` (what `.ci/run` calls).

- `lint`: ruff and mypy.
- `tests`: the whole default suite (tests/unit, tests/integration) in an environment built
  from `requirements.lock`, the versions an operator installs (watchdog 7 on Python 3.11+),
  plus the test tools from `requirements-dev.lock`. No dagster in it: the integration tests'
  dagster-webserver and the probe that reads back what it recorded run from the Dagster
  environment (`tests/support/envs.py`, built from `requirements-dagster.lock`).
- `extra`: in that Dagster environment (which has watchdog 6, as dagster pins it), the
  dagster extra's tests (`build_definitions`, `demo`) and every watch-mode test again, so
  both supported watchdog majors run the watch-mode tests.
- `py310` (not run by default: needs a python3.10 on the machine): the unit and watch-mode
  tests on Python 3.10 from the lock's 3.10 branch (watchdog 6, tomli), as a host with
  Python 3.10 installs it.
"""

from __future__ import annotations

import sys

import nox

nox.options.sessions = ["lint", "tests", "extra"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

LOCKS = ("-r", "requirements.lock", "-r", "requirements-dev.lock")


def _install_locked(session: nox.Session) -> None:
    session.install("--require-hashes", *LOCKS)
    session.install("--no-deps", "-e", ".")


@nox.session
def lint(session: nox.Session) -> None:
    _install_locked(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "asset_watcher")


def _dagster_python(session: nox.Session) -> str:
    # nox's own Python where the session has none (`extra`): a fresh host may have no
    # `python` on PATH.
    python = "python" if session.venv_backend != "none" else sys.executable
    output = session.run(python, "tests/support/envs.py", silent=True)
    assert isinstance(output, str)
    return output.strip().splitlines()[-1]


@nox.session
def tests(session: nox.Session) -> None:
    _install_locked(session)
    session.run("python", "-c", "import watchdog.version as v; print('watchdog', v.VERSION_STRING)")
    dagster_python = _dagster_python(session)
    session.run(
        "python",
        "-m",
        "pytest",
        *session.posargs,
        env={"ASSET_WATCHER_TEST_DAGSTER_PYTHON": dagster_python},
    )


@nox.session(venv_backend="none")
def extra(session: nox.Session) -> None:
    dagster_python = _dagster_python(session)
    env = {"ASSET_WATCHER_TEST_DAGSTER_PYTHON": dagster_python}
    session.run(
        dagster_python, "-c", "import watchdog.version as v; print('watchdog', v.VERSION_STRING)"
    )
    session.run(dagster_python, "-m", "pytest", "tests/dagster_extra", *session.posargs, env=env)
    session.run(
        dagster_python,
        "-m",
        "pytest",
        "-m",
        "watch",
        "tests/unit",
        "tests/integration",
        *session.posargs,
        env=env,
    )


@nox.session(python="3.10", default=False)
def py310(session: nox.Session) -> None:
    _install_locked(session)
    session.run("python", "-c", "import watchdog.version as v; print('watchdog', v.VERSION_STRING)")
    session.run("python", "-m", "pytest", "tests/unit", "-m", "not benchmark", *session.posargs)
    session.run("python", "-m", "pytest", "-m", "watch", "tests/integration", *session.posargs)
