"""The `burst` command. Progress and logs go to stderr; stdout carries the result alone.

Exit codes: 0 ok, 1 job failed, 2 bad input, 3 cloud or capacity error,
4 budget refused or exceeded, 130 interrupted (Ctrl-C or SIGTERM; teardown still runs).
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from burst.spec import SpecError, format_duration, load_job

EXIT_OK, EXIT_JOB_FAILED, EXIT_BAD_INPUT, EXIT_CLOUD, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# 4 (budget refused or exceeded) is reserved for the budget check of the capacity work.

app = typer.Typer(
    help="Rent a supercomputer for an afternoon.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
sandbox_app = typer.Typer(
    help="The embedded local cloud (moto + local processes).", no_args_is_help=True
)
app.add_typer(sandbox_app, name="sandbox")
err = Console(stderr=True)
out = Console()


def say_error(text: str) -> None:
    """One unwrapped line on stderr, so tools can grep it."""
    err.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)


def fail(code: int, cause: str, fix: str | None = None) -> typer.Exit:
    say_error(cause)
    if fix:
        err.print(f"[bold]fix:[/] {fix}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def plan_table(plan) -> Table:
    table = Table(title="Plan", title_justify="left")
    for column in ("role", "type", "zone", "market", "count", "vCPUs", "$/h"):
        table.add_column(column, justify="right" if column in ("count", "vCPUs", "$/h") else "left")
    for line in plan.lines:
        table.add_row(
            line.role,
            line.instance_type,
            line.zone,
            line.market,
            str(line.count),
            str(line.cores),
            f"{line.total_hourly:.4f}",
        )
    table.caption = (
        f"{plan.worker_cores} worker cores, ${plan.hourly:.4f}/h, "
        f"cost bound ${plan.cost_bound:.4f}  ({plan.price_source})"
    )
    return table


class Display:
    """Turns pipeline events into a live progress display on stderr."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        self.bars: dict[str, Any] = {}
        self.manifest: dict | None = None

    def bar(self, name: str, total: int | None = None, note: str = ""):
        if name not in self.bars:
            self.bars[name] = self.progress.add_task(name, total=total, note=note)
        return self.bars[name]

    def __call__(self, event: str, **info: Any) -> None:
        if event == "manifest":
            self.manifest = info["manifest"]
        elif event == "planned":
            err.print(plan_table(info["plan"]))
            self.progress.start()
            plan = info["plan"]
            self.bar("instances launched", total=sum(line.count for line in plan.lines))
        elif event == "sandbox":
            kind = "private, for this run" if info["private"] else "running"
            err.print(f"sandbox cloud ({kind}) at {info['endpoint']}", highlight=False)
        elif event == "launched":
            self.progress.advance(self.bar("instances launched"), len(info["records"]))
        elif event == "scheduler":
            self.progress.console.print(
                f"scheduler {info['address']}  dashboard {info['dashboard']}", highlight=False
            )
        elif event == "workers":
            self.progress.update(
                self.bar("workers joined", total=info["expected"]),
                completed=info["joined"],
                total=info["expected"],
            )
        elif event == "tasks":
            note = f"[red]{info['failed']} failed[/]" if info["failed"] else ""
            self.progress.update(
                self.bar("tasks done", total=info["total"]),
                completed=info["done"] + info["failed"],
                note=note,
            )
        elif event == "teardown":
            self.bar("tearing down", total=1)
        elif event == "torn_down":
            self.progress.update(self.bar("tearing down"), completed=1)
            self.progress.stop()

    def close(self) -> None:
        self.progress.stop()


def summary(manifest: dict) -> Table:
    table = Table(
        title=f"Job {manifest['job_id']}: {manifest['status']}",
        title_justify="left",
        show_header=False,
    )
    table.add_column(style="bold")
    table.add_column()
    tasks = manifest["tasks"]
    teardown = manifest["teardown"]
    rows = {
        "result": json.dumps(manifest["result"], default=repr),
        "tasks": f"{tasks['done']} done, {tasks['failed']} failed, "
        f"{tasks.get('retried', 0)} retried of {tasks['total']}",
        "cores": f"{manifest['cores']['worker_vcpus']} worker vCPUs "
        f"({manifest['cores']['requested']} requested)",
        "instances": ", ".join(
            f"{i['role']} {i['instance_type']} {i['market']}" for i in manifest["instances"]
        ),
        "stages": "  ".join(f"{k} {v:.1f}s" for k, v in manifest["timings"].items()),
        "teardown": "verified: nothing left"
        if teardown["verified"]
        else f"[red]NOT verified: {teardown['leftovers']} {teardown['errors']}[/]",
    }
    for failure in manifest["failures"][:5]:
        stderr = (failure.get("stderr_tail") or "").strip().splitlines()
        last = f": {stderr[-1][:120]}" if stderr else ""
        rows[f"task {failure['task']}"] = f"[red]{failure['error'].splitlines()[0]}{last}[/]"
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a scheduler killing us) takes the same path as Ctrl-C: tear down, exit 130."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="The job spec (YAML).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the manifest alone on stdout.")
    ] = False,
) -> None:
    """Plan, launch, run, collect and tear down one job."""
    try:
        job = load_job(spec)
    except SpecError as error:
        for problem in error.problems:
            say_error(problem)
        raise fail(
            EXIT_BAD_INPUT,
            f"{spec} is not a valid job spec; nothing was started",
            "correct the fields above and run again",
        ) from None

    from botocore.exceptions import BotoCoreError, ClientError

    from burst.cloud.base import CloudError
    from burst.runner import run_job

    _interrupt_on_sigterm()
    display = Display()
    err.print(
        f"job [bold]{job.spec.name}[/]: {len(job.tasks)} tasks on {job.spec.cores} cores, "
        f"max {format_duration(job.spec.max_runtime)}, cloud {job.spec.cloud}"
    )
    code, cause, fix = EXIT_OK, "", None
    try:
        result = run_job(job, on_event=display)
    except KeyboardInterrupt:
        code, cause = EXIT_INTERRUPTED, "interrupted; the cluster was torn down"
    except (CloudError, ClientError, BotoCoreError) as error:
        code, cause = EXIT_CLOUD, f"{error}"
        fix = "check the cloud's message, your credentials and limits; the cluster was torn down"
    except Exception:
        traceback.print_exc()
        code, cause = EXIT_JOB_FAILED, "burst itself failed (a bug); the cluster was torn down"
        fix = "please report the traceback above"
    display.close()
    manifest = display.manifest
    if as_json and manifest:  # the machine contract: the manifest on every exit path
        print(json.dumps(manifest, indent=2, default=repr))
    if code:
        raise fail(code, cause, fix)
    if not as_json:
        out.print(summary(manifest))
        out.print(f"results: {result.folder}/", highlight=False)
    if not manifest["teardown"]["verified"]:
        raise fail(
            EXIT_CLOUD,
            "teardown could not verify that nothing is left",
            "delete the resources listed in the manifest's teardown.leftovers",
        )
    if not result.ok:
        if manifest.get("error"):
            say_error(manifest["error"])
        raise typer.Exit(EXIT_JOB_FAILED)


@sandbox_app.command("up")
def sandbox_up() -> None:
    """Start a long-lived sandbox cloud that `burst run` will use."""
    from burst.cloud import sandbox

    state = sandbox.running_sandbox() or sandbox.start_detached()
    out.print(f"sandbox running at {state['endpoint']} (pid {state['pid']})", highlight=False)


@sandbox_app.command("status")
def sandbox_status() -> None:
    """Show whether the sandbox runs, and its instances."""
    from burst.cloud import sandbox

    state = sandbox.running_sandbox()
    if state is None:
        out.print("sandbox: not running (`burst run` starts a private one per run)")
        raise typer.Exit(EXIT_CLOUD)
    described = []
    for region in sandbox.SANDBOX_REGIONS:
        ec2 = sandbox.session().client("ec2", region_name=region, endpoint_url=state["endpoint"])
        described += [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    out.print(
        f"sandbox running at {state['endpoint']} (pid {state['pid']}); "
        f"{sum(i['State']['Name'] == 'running' for i in described)} instances running, "
        f"{len(described)} known",
        highlight=False,
    )


@sandbox_app.command("down")
def sandbox_down() -> None:
    """Stop the long-lived sandbox and every instance in it."""
    from burst.cloud import sandbox

    stopped = sandbox.stop_detached()
    out.print("sandbox stopped" if stopped else "sandbox was not running")


def main() -> None:  # pragma: no cover - `python -m burst.cli`
    sys.exit(app())


if __name__ == "__main__":
    main()
