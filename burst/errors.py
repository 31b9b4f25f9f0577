"""burst's errors: one hierarchy, each error with its exit code and an optional fix line.

The CLI maps any `BurstError` to its `exit_code` in one place; everything else is a bug.

Exit codes: 0 ok, 1 job failed, 2 bad input, 3 cloud or capacity error,
4 budget refused or exceeded, 5 max_runtime reached (finished results kept),
130 interrupted (Ctrl-C or SIGTERM; teardown still runs).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CLOUD = 3
EXIT_BUDGET = 4
EXIT_DEADLINE = 5
EXIT_INTERRUPTED = 130


class BurstError(Exception):
    """An expected failure: a one-line cause (`str(error)`) and, where one helps, a fix."""

    exit_code = EXIT_JOB_FAILED

    def __init__(self, cause: str, fix: str | None = None):
        super().__init__(cause)
        self._fix = fix

    @property
    def fix(self) -> str | None:
        return self._fix


class SpecError(BurstError, ValueError):
    """A spec that cannot run: each line names the field, the value and what is accepted."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems), "correct the fields above and run again")


class SettingError(BurstError):
    """A bad setting outside the spec, such as a BURST_SANDBOX_* variable: refused before any
    work, naming the variable, the value and what is accepted."""

    exit_code = EXIT_BAD_INPUT


class PlanError(SpecError):
    """Constraints that no offer meets: found before any cloud call."""


class CloudError(BurstError, RuntimeError):
    """The cloud refused or failed: capacity, permissions, limits. `code` is the cloud's own
    error code when there is one (e.g. "UnauthorizedOperation")."""

    exit_code = EXIT_CLOUD

    def __init__(self, cause: str, fix: str | None = None, code: str | None = None):
        super().__init__(cause, fix)
        self.code = code


class CertificateRefused(CloudError):
    """The cluster's scheduler refused to let this certificate act as a Dask client (only the
    client's and the detached driver's may: burst.node.CLIENT_ONLY_HANDLERS)."""


class BudgetError(BurstError):
    """The plan, or what is running, is over the spec's max_cost or max_hourly."""

    exit_code = EXIT_BUDGET
