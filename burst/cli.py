"""The `burst` command. Progress and logs go to stderr; stdout carries the result alone.

Exit codes (burst.errors): 0 ok, 1 job failed, 2 bad input, 3 cloud or capacity error,
4 budget refused or exceeded, 5 max_runtime reached (finished results kept),
130 interrupted (Ctrl-C or SIGTERM; teardown still runs).
`exit_for` is the one place where an exception becomes an exit code.
"""

from __future__ import annotations

import contextlib
import gc as python_gc
import json
import os
import signal
import sys
import traceback
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from burst.catalog import PUBLIC_IPV4_HOURLY
from burst.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUDGET,
    EXIT_CLOUD,
    EXIT_DEADLINE,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    BurstError,
    CloudError,
    SpecError,
)
from burst.spec import JobSpec, assignments, format_duration, load_spec

# The exit codes are the CLI's contract with workflow tools.
__all__ = ["EXIT_BAD_INPUT", "EXIT_BUDGET", "EXIT_CLOUD", "EXIT_DEADLINE", "EXIT_INTERRUPTED"]
__all__ += ["EXIT_JOB_FAILED", "EXIT_OK", "app"]


def _flags_without_a_type_label() -> None:
    """typer's rich help labels every option with its type, flags too (`--json <bool>`); a
    flag takes no value, so it gets no label (options that take one keep theirs)."""
    from typer.core import TyperOption

    labelled = TyperOption.display_type_rich
    if getattr(labelled, "_burst", False):
        return

    def label(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else labelled(self, ctx)

    label._burst = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = label  # type: ignore[method-assign]


_flags_without_a_type_label()
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
ManifestJson = Annotated[bool, typer.Option("--json", help="Print the manifest alone on stdout.")]
SetFields = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="FIELD=VALUE",
        help="Change a spec field as if written in the file: cores=64, max_runtime=2h, "
        "run.timeout=5m (dotted for nested fields; repeatable).",
    ),
]


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        print(f"burst {version('burst')}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Rent a supercomputer for an afternoon."""


def say(label: str, style: str, text: str) -> None:
    """One unwrapped line on stderr, so tools can grep it. The text is printed as it is: a
    value such as ':x:' or '[red]' is neither an emoji nor markup (a Text is never parsed)."""
    err.print(Text.assemble((label, style), " ", text), highlight=False, soft_wrap=True)


def say_error(text: str) -> None:
    say("error:", "bold red", text)


def fail(code: int, cause: str, fix: str | None = None) -> typer.Exit:
    say_error(cause)
    if fix:
        say("fix:", "bold", fix)
    return typer.Exit(code)


def plan_table(plan) -> Group:
    """The plan as a person reads it, at 80 columns too: a line per pool (the type and zone
    never cut), then its totals, the price source once, and the notes."""
    table = Table(
        title="Plan",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    columns = ("role", "type", "zone", "market", "count", "vCPUs", "GiB", "$/h")
    for column in columns:
        table.add_column(
            column,
            justify="left" if column in columns[:4] else "right",
            no_wrap=True,
        )
    for line in plan.lines:
        table.add_row(
            line.role,
            line.instance_type,
            line.zone,
            line.market,
            str(line.count),
            str(line.cores),
            f"{line.memory_gib * line.count:g}",
            f"{line.total_hourly:.4f}",
        )
    wanted = f" ({plan.cores} requested)" if plan.cores else ""
    # The pool cap is worth a word only where it changed the plan (a relaxed cap has its note).
    share = (
        f"; at most {plan.max_pool_share:.0%} of the cores per spot pool"
        if plan.max_pool_share and plan.share_binds
        else ""
    )
    # Public IPv4 addresses are billed apart from the instances: their own line (each pool's
    # $/h above holds its addresses).
    addresses = plan.public_ipv4
    lines = [
        f"{plan.worker_cores} worker cores{wanted} on {plan.instances} instances{share}",
        f"${plan.hourly:.4f}/h, cost bound ${plan.cost_bound:.4f} "
        f"({format_duration_hours(plan.max_runtime_hours)} incl. grace)",
        f"public IPv4: {addresses} address{'es' * (addresses != 1)} x ${PUBLIC_IPV4_HOURLY}/h "
        f"= ${plan.ipv4_hourly:.4f}/h, included above"
        if addresses
        else "public IPv4: none (network.public_ip: none)",
        f"root volumes: {plan.instances} x gp3 = ${plan.disk_hourly:.4f}/h, included above",
        f"prices: {plan.price_source}",
        *(f"note: {note}" for note in plan.notes),
    ]
    return Group(table, *(Text(line) for line in lines))


def format_duration_hours(hours) -> str:
    from datetime import timedelta

    return format_duration(timedelta(seconds=round(float(hours) * 3600)))


def exit_for(
    error: BaseException, spec: Path | None = None, as_json: bool = False, show_plan: bool = True
) -> typer.Exit:
    """The one place where an exception becomes an exit code and the lines a person reads:
    a burst error gives its cause, its fix and its code; anything else is a bug, exit 1."""
    if isinstance(error, KeyboardInterrupt):
        return fail(EXIT_INTERRUPTED, "interrupted; the cluster was torn down")
    if not isinstance(error, BurstError):
        from burst.tls import refusal  # here: it imports distributed

        error = refusal(error) or error  # a refused certificate: distributed's ImportError
    if isinstance(error, SpecError):
        for problem in error.problems:
            say_error(problem)
        where = f"{spec} is not a valid job spec" if spec else "the job spec is not valid"
        return fail(error.exit_code, f"{where}; nothing was started", error.fix)
    if isinstance(error, BurstError):
        refused = getattr(error, "plan", None)  # a budget refusal carries the refused plan
        if refused is not None and as_json:
            print(json.dumps(error.to_dict(), indent=2))
        elif refused is not None and show_plan:
            err.print(plan_table(refused))
        return fail(error.exit_code, str(error), error.fix)
    traceback.print_exception(error)
    return fail(EXIT_JOB_FAILED, "burst itself failed (a bug)", "please report the traceback above")


def reach_cloud(spec: JobSpec) -> None:
    """On AWS, credentials and the network are checked before the plan is shown or a results
    folder made: CloudError (exit 3) with the fix."""
    if spec.cloud == "aws":
        from burst.cloud.botoerrors import aws_session

        aws_session(spec.region)


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

    def __call__(self, event) -> None:
        from burst import events  # here, so that `burst --help` does not import the planner

        match event:
            case events.ManifestWritten(manifest=manifest):
                self.manifest = manifest
            case events.Planned(plan=plan, job_id=job_id, cluster_id=cluster_id):
                err.print(plan_table(plan))
                # First, so that a killed run can still be found: `burst cancel JOB_ID`.
                err.print(f"job {job_id}  cluster {cluster_id}", highlight=False, soft_wrap=True)
                self.progress.start()
                self.bar("instances launched", total=sum(line.count for line in plan.lines))
            case events.SandboxUsed():
                err.print(str(event), highlight=False)
            case events.Launched(records=records):
                # Fallback can launch more (smaller) instances than planned: grow the bar.
                task = self.progress.tasks[self.bar("instances launched")]
                done = task.completed + len(records)
                self.progress.update(task.id, completed=done, total=max(task.total or 0, done))
            case events.CapacityShort(cores=cores, wanted=wanted):
                self.progress.console.print(
                    f"[yellow]only {cores} of {wanted} cores came up[/] "
                    "(at least min_cores): running on them",
                    highlight=False,
                )
            case events.CapacityRefused(error=error):
                self.progress.console.print(
                    Text.assemble(("no capacity:", "yellow"), f" {error}"), highlight=False
                )
            case events.SchedulerUp():
                self.progress.console.print(str(event), highlight=False)
            case events.WorkersJoined(joined=joined, expected=expected):
                self.progress.update(
                    self.bar("workers joined", total=expected), completed=joined, total=expected
                )
            case events.TasksProgress(done=done, failed=failed, total=total):
                note = f"[red]{failed} failed[/]" if failed else ""
                self.progress.update(
                    self.bar("tasks done", total=total), completed=done + failed, note=note
                )
            case events.TearingDown():
                self.bar("tearing down", total=1)
            case events.TornDown():
                self.progress.update(self.bar("tearing down"), completed=1)
                self.progress.stop()

    def close(self) -> None:
        self.progress.stop()


SUMMARY_FAILURES = 5  # failures listed in a summary; the rest are counted


def failure_line(failure: dict) -> str:
    """One failure in one line: its error, where the function raised it (file:line), or a
    command's last line of stderr."""
    import re

    lines = (failure.get("error") or "failed").splitlines()
    text = lines[0]
    places = [m for line in lines if (m := re.match(r'\s*File "(.+)", line (\d+)', line))]
    # the innermost frame of the user's own code, rather than of a library it called
    own = [m for m in places if "site-packages" not in m[1] and "/lib/python" not in m[1]]
    if places:
        place = (own or places)[-1]
        text += f" (at {Path(place[1]).name}:{place[2]})"
    stderr = (failure.get("stderr_tail") or "").strip().splitlines()
    if stderr and not places:  # a command's: what it said last
        text += f": {stderr[-1][:120]}"
    return text


def summary(manifest: dict) -> Table:
    from rich.markup import escape

    from burst.results import dumps

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
        "result": dumps(manifest["result"]),
        "tasks": f"{tasks['done']} done, {tasks['failed']} failed, "
        f"{tasks.get('retried', 0)} retried of {tasks['total']}",
        "cores": f"{manifest['cores']['worker_vcpus']} worker vCPUs "
        f"({manifest['cores']['requested']} requested)",
        "instances": ", ".join(
            f"{i['role']} {i['instance_type']} {i['market']}" for i in manifest["instances"]
        ),
        "stages": "  ".join(f"{k} {v:.1f}s" for k, v in manifest["timings"].items()),
        "cost": f"${Decimal(manifest['cost']['actual']):.4f} billed "
        f"(bound ${manifest['cost']['cost_bound']}, {manifest['cost']['price_source']})",
        "teardown": "verified: nothing left"
        if teardown["verified"]
        else f"[red]NOT verified: {teardown['leftovers']} {teardown['errors']}[/]",
    }
    if manifest["status"] == "failed_fast":  # why most tasks never ran
        rows["stopped early"] = f"[red]{escape(manifest['error'])}[/]"
    elif manifest["status"] != "succeeded" and manifest.get("error"):
        rows["why"] = f"[red]{escape(manifest['error'])}[/]"  # e.g. why the reduce did not run
    shown = manifest["failures"][:SUMMARY_FAILURES]
    for failure in shown:
        rows[f"task {failure['task']}"] = f"[red]{escape(failure_line(failure))}[/]"
    if tasks["failed"] > len(shown):
        rows[""] = (
            f"[red]+{tasks['failed'] - len(shown)} more[/] (every failure: results.jsonl; "
            "the first 50: manifest.json)"
        )
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
    as_json: ManifestJson = False,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="JOB_ID",
            help="Run only the tasks not done in that job's results, into its folder.",
        ),
    ] = None,
    set_fields: SetFields = None,
) -> None:
    """Plan, launch, run, collect and tear down one job."""
    from burst.plan import plan_within_budget

    try:
        from burst.job import load_job  # here: it imports distributed

        job = load_job(spec, assignments(set_fields))
        # Plan (pure) before anything else: a plan over budget is refused before any cloud
        # call, any launch and any results folder.
        plan_within_budget(job.spec)
        reach_cloud(job.spec)
    except BurstError as error:
        raise exit_for(error, spec, as_json) from None

    from burst.runner import run_job

    _interrupt_on_sigterm()
    display = Display()
    err.print(
        f"job [bold]{job.spec.name}[/]: {len(job.tasks)} tasks on {job.spec.cores} cores, "
        f"max {format_duration(job.spec.max_runtime)}, cloud {job.spec.cloud}"
    )
    failure: BaseException | None = None
    try:
        result = run_job(job, on_event=display, resume=resume)
    except (KeyboardInterrupt, Exception) as error:  # the manifest is printed first, below
        failure = error
    display.close()
    from burst.results import dumps

    # A resumed job with nothing left to run rents nothing: its manifest is the earlier one.
    manifest = display.manifest or (result.manifest if failure is None else None)
    if as_json and manifest:  # the machine contract: the manifest on every exit path
        print(dumps(manifest, indent=2))
    if failure is not None:
        raise exit_for(failure, spec, show_plan=False)
    if not as_json:
        out.print(summary(manifest))
        out.print(Text(f"results: {result.folder}/"), highlight=False)
    if not manifest["teardown"]["verified"]:
        raise fail(
            EXIT_CLOUD,
            "teardown could not verify that nothing is left",
            "delete the resources listed in the manifest's teardown.leftovers",
        )
    if result.status == "deadline":
        raise fail(
            EXIT_DEADLINE,
            result.manifest["error"],
            f"raise max_runtime, or run the rest: burst run {spec} --resume {result.job_id}",
        )
    if not result.ok:
        if result.manifest.get("error"):
            say_error(result.manifest["error"])
        raise typer.Exit(EXIT_JOB_FAILED)


CloudOption = Annotated[str, typer.Option(help="sandbox or aws")]
RegionOption = Annotated[str, typer.Option(help="The region to look in.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def _sweep(cloud: str, region: str, as_json: bool, title: str, act) -> list | None:
    """Find clusters by tag in one region and act on them (list or delete): `gc`, `cancel`.
    Prints them as a table (or JSON) and fails when a deletion could not be verified. None
    when there was no cloud to look in (the sandbox is not running)."""
    from burst.cloud.connect import open_provider

    if cloud not in ("sandbox", "aws"):
        raise fail(EXIT_BAD_INPUT, f"--cloud: {cloud!r} is not sandbox or aws")
    try:
        connection = open_provider(cloud, region, start_sandbox=False)
        # A private sandbox dies with its run and leaves nothing.
        clusters = None if connection is None else act(connection.provider)
    except BurstError as error:
        raise exit_for(error) from None
    if connection is None:
        err.print("sandbox: not running, so nothing is left in it")
        if as_json:
            print("[]")
        return None
    if as_json:
        print(json.dumps([c.to_dict() for c in clusters], indent=2))
    elif clusters:
        table = Table(title=f"{title} in {cloud} {region}", title_justify="left")
        for column in ("cluster", "job", "why", "resources", "deleted"):
            table.add_column(column)
        for c in clusters:
            deleted = "-" if c.teardown is None else "yes" if c.teardown.verified else "[red]NO[/]"
            table.add_row(c.cluster_id, c.job_id, c.reason, "\n".join(c.resources), deleted)
        out.print(table)
    if any(c.teardown and not c.teardown.verified for c in clusters):
        raise fail(EXIT_CLOUD, "some resources could not be deleted", "see the table above")
    return clusters


@app.command()
def gc(
    yes: Annotated[bool, typer.Option("--yes", help="Delete them (default: only list).")] = False,
    cloud: CloudOption = "sandbox",
    region: RegionOption = "us-east-1",
    as_json: JsonOption = False,
) -> None:
    """List what burst left behind (deadline passed, or no instance running); --yes deletes."""
    from burst.gc import collect_garbage

    clusters = _sweep(
        cloud, region, as_json, "Left behind", lambda p: collect_garbage(p, delete=yes)
    )
    if clusters and not yes:
        err.print("nothing deleted: run `burst gc --yes` to delete these")
    elif clusters == []:
        err.print(f"nothing left behind in {cloud} {region}", highlight=False)


# --------------------------------------------------------------------- detached jobs

JobArgument = Annotated[str, typer.Argument(help="The job id burst run or burst submit printed.")]
FindCloud = Annotated[
    str | None, typer.Option("--cloud", help="sandbox or aws (default: the job's, or sandbox)")
]
FindRegion = Annotated[
    str | None, typer.Option("--region", help="The job's region (default: the job's)")
]
# A job's end as an exit code: the same codes as burst run.
STATE_EXIT = {
    "succeeded": EXIT_OK,
    "failed": EXIT_JOB_FAILED,
    "failed_fast": EXIT_JOB_FAILED,  # stopped early: the first tasks all failed alike
    "deadline": EXIT_DEADLINE,
    "cancelled": EXIT_JOB_FAILED,  # someone stopped it: waiting again will not help
    "interrupted": EXIT_INTERRUPTED,
    "error": EXIT_CLOUD,
    "lost": EXIT_CLOUD,
}


def _locate(job_id: str, cloud: str | None, region: str | None):
    from burst.detached import locate

    if cloud not in (None, "sandbox", "aws"):
        raise fail(EXIT_BAD_INPUT, f"--cloud: {cloud!r} is not sandbox or aws")
    try:
        return locate(job_id, cloud, region)
    except BurstError as error:
        raise exit_for(error) from None


def _finished(manifest: dict, as_json: bool, job_code: bool = True) -> None:
    """A collected detached job: its manifest, then the job's own exit code (`job_code`; a
    job cancelled by the user ended as asked: exit 0 unless its teardown failed)."""
    from burst.results import dumps

    if as_json:
        print(dumps(manifest, indent=2))
    else:
        out.print(summary(manifest))
    if not manifest["teardown"]["verified"]:
        raise fail(
            EXIT_CLOUD,
            "teardown could not verify that nothing is left",
            "delete the resources listed in the manifest's teardown.leftovers",
        )
    code = STATE_EXIT.get(manifest["status"], EXIT_CLOUD) if job_code else EXIT_OK
    if code:
        raise fail(code, f"job {manifest['job_id']} {manifest['status']}: {manifest['error']}")


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="The job spec (YAML).")],
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"job_id": ...} alone on stdout.')
    ] = False,
    set_fields: SetFields = None,
) -> None:
    """Launch a job and hand it to its cluster: it runs on without this machine.

    Prints the job id; follow it with status, logs and wait."""
    from burst.plan import plan_within_budget

    try:
        from burst.job import load_job  # here: it imports distributed

        job = load_job(spec, assignments(set_fields))
        plan_within_budget(job.spec)
        reach_cloud(job.spec)
    except BurstError as error:
        raise exit_for(error, spec, as_json) from None
    from burst.cloud import sandbox
    from burst.detached import submit as submit_job

    if job.spec.cloud == "sandbox" and sandbox.running_sandbox() is None:
        started = sandbox.start_detached(idle_stop=sandbox.IDLE_STOP_SECONDS)
        err.print(
            f"started the long-lived sandbox at {started['endpoint']}: a detached job needs a "
            f"cloud that outlives this command (it stops itself after "
            f"{sandbox.IDLE_STOP_SECONDS // 60:.0f} minutes with no instance; "
            "`burst sandbox down` stops it now)",
            highlight=False,
        )
    display = Display()
    try:
        submission = submit_job(job, on_event=display)
    except (KeyboardInterrupt, Exception) as error:
        display.close()
        raise exit_for(error, spec) from None
    display.close()
    if as_json:
        print(json.dumps(submission))
    else:
        job_id = submission["job_id"]
        out.print(f"job {job_id} submitted", highlight=False)
        err.print(f"follow it: burst status {job_id}; burst wait {job_id}", highlight=False)


@app.command()
def status(
    job_id: JobArgument,
    cloud: FindCloud = None,
    region: FindRegion = None,
    as_json: JsonOption = False,
) -> None:
    """A job's state, tasks, instances and cost so far."""
    from burst.detached import describe

    job = _locate(job_id, cloud, region)
    try:
        record = describe(job)
    except BurstError as error:
        raise exit_for(error) from None
    if as_json:
        print(json.dumps(record, indent=2))
        return
    tasks = record["tasks"]
    out.print(
        f"job {job_id}: {record['state']}; "
        + (
            f"{tasks['done']} done, {tasks['failed']} failed of {tasks['total']} tasks; "
            if tasks["total"] is not None
            else ""
        )
        + f"{record['instances']} instances running; "
        + (f"${Decimal(record['cost']):.4f} so far" if record["cost"] else "cost unknown")
        + (f"; {record['error']}" if record["error"] else ""),
        highlight=False,
        markup=False,  # the error is the cloud's or a task's text: no markup, no emoji
        emoji=False,
    )


@app.command()
def logs(
    job_id: JobArgument,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Until the job ends.")] = False,
    cloud: FindCloud = None,
    region: FindRegion = None,
) -> None:
    """A detached job's driver log.

    What it ran and how it ended; each task's own output tails are in results.jsonl."""
    import time as clock

    from burst.drive import TERMINAL

    job = _locate(job_id, cloud, region)
    shown = 0
    try:
        while True:
            # The state first: once it says ended, the log read after it is the last one.
            ended = follow and job.status()["state"] in (*TERMINAL, "lost")
            text = (job.bucket.read(f"{job.base}/driver.log") or b"").decode(errors="replace")
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
            if not follow or ended:
                return
            clock.sleep(2)
    except BurstError as error:
        raise exit_for(error) from None


@app.command()
def wait(
    job_id: JobArgument,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up waiting after this many seconds.")
    ] = None,
    cloud: FindCloud = None,
    region: FindRegion = None,
    as_json: ManifestJson = False,
) -> None:
    """Wait for a job to end, collect it, exit with its code.

    While it runs, replaces the workers it lost (spot interruptions) with this machine's
    keys. Then downloads the results into results/<job-id>/, deletes what is left of the
    cluster and verifies that nothing is."""
    from burst.detached import wait as wait_for

    job = _locate(job_id, cloud, region)
    try:
        manifest = wait_for(job, timeout, on_log=lambda line: err.print(Text(line)))
    except BurstError as error:
        raise exit_for(error) from None
    if manifest is None:
        raise fail(
            EXIT_CLOUD,
            f"job {job_id} still runs after {timeout:g}s; nothing was downloaded or deleted",
            f"wait again: burst wait {job_id}",
        )
    _finished(manifest, as_json)


@app.command()
def results(
    job_id: JobArgument,
    cloud: FindCloud = None,
    region: FindRegion = None,
    as_json: ManifestJson = False,
) -> None:
    """Collect a job that has ended, without waiting.

    Downloads its results and deletes what is left of its cluster (verified); a job still
    running is refused."""
    from burst.detached import wait as wait_for

    job = _locate(job_id, cloud, region)
    try:
        manifest = wait_for(job, timeout=0)
    except BurstError as error:
        raise exit_for(error) from None
    if manifest is None:
        raise fail(
            EXIT_CLOUD,
            f"job {job_id} still runs: its results are not final",
            f"burst wait {job_id}, or burst cancel {job_id}",
        )
    _finished(manifest, as_json)


@app.command()
def cancel(
    job_id: JobArgument,
    cloud: FindCloud = None,
    region: FindRegion = None,
    as_json: JsonOption = False,
) -> None:
    """Stop a job now, keep what finished, tear down and verify.

    A detached job's driver stops its tasks and its results are downloaded first; a burst
    run whose client was killed has its clusters (found by the job's tag) torn down."""
    from burst import detached, state
    from burst.gc import cancel_job
    from burst.results import job_folder

    try:
        job_folder(".", job_id)  # a malformed id is refused before any call
        job = detached.locate(job_id, cloud, region)
        submitted = job.read_json("cluster.json") is not None
    except SpecError as error:
        if not error.problems[0].startswith("job id: no job"):
            raise exit_for(error) from None
        job, submitted = None, False
    except BurstError:
        job, submitted = None, False
    if job is not None and submitted:
        try:
            manifest = detached.cancel(job)
        except BurstError as error:
            raise exit_for(error) from None
        _finished(manifest, as_json, job_code=False)
        return
    row = state.get(job_id) or {}
    cloud = cloud or row.get("cloud") or "sandbox"
    region = region or row.get("region") or "us-east-1"
    clusters = _sweep(cloud, region, as_json, f"Job {job_id}", lambda p: cancel_job(p, job_id))
    if clusters == []:
        err.print(f"nothing of job {job_id} is running or left in {cloud} {region}")
    if row:
        state.record(job_id, state="cancelled")


@app.command("ls")
def list_jobs(
    cloud: Annotated[
        str | None, typer.Option(help="Also list jobs found by tag in this cloud (aws, sandbox)")
    ] = None,
    region: Annotated[str, typer.Option(help="... in this region.")] = "us-east-1",
    as_json: JsonOption = False,
) -> None:
    """Every job this machine ran or submitted, with state, cores, cost and age.

    Running ones are refreshed from the cloud; with --cloud, jobs found there by tag too."""
    from burst.detached import reconcile

    try:
        jobs = reconcile(cloud, region)
    except BurstError as error:
        raise exit_for(error) from None
    if as_json:
        print(json.dumps(jobs, indent=2))
        return
    table = Table(title="Jobs", title_justify="left")
    for column in ("job", "mode", "state", "cores", "cost", "age", "cloud"):
        table.add_column(column, no_wrap=column in ("job", "cloud"))
    for job in jobs:
        table.add_row(
            job["job_id"],
            job["mode"] or "-",
            job["state"] or "-",
            job["cores"] or "-",
            f"${Decimal(job['cost']):.4f}" if job.get("cost") else "-",
            job["age"],
            f"{job['cloud']} {job['region']}",
        )
    out.print(table)


def _offers(spec: JobSpec, offline: bool):
    if offline:
        return None
    from burst.catalog import offers_for

    return offers_for(spec, warn=lambda note: err.print(Text(note), highlight=False))


@app.command("plan")
def plan_command(
    spec: Annotated[Path, typer.Argument(help="The job spec (YAML).")],
    cores: Annotated[
        int | None, typer.Option("--cores", help="Plan for this many cores instead.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan alone on stdout, as JSON.")
    ] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use the snapshot's prices even on AWS.")
    ] = False,
    set_fields: SetFields = None,
) -> None:
    """Plan the capacity and its cost; launches nothing. Exit 4 when over budget."""
    from burst.plan import BudgetError, check_budget, plan

    try:
        overrides = assignments(set_fields)
        if cores is not None:
            overrides["cores"] = cores
        job_spec = load_spec(spec, overrides)
        offers = _offers(job_spec, offline)
        capacity = plan(job_spec, offers=offers)
        check_budget(job_spec, capacity, offers=offers)
    except BurstError as error:
        if isinstance(error, BudgetError) and not as_json:
            out.print(plan_table(error.plan))  # the refused plan is this command's output
        raise exit_for(error, spec, as_json, show_plan=False) from None
    if as_json:
        print(json.dumps(capacity.to_dict(), indent=2))
    else:
        out.print(plan_table(capacity))


@app.command()
def doctor(
    spec: Annotated[
        Path | None, typer.Argument(help="Also check this job's plan against the account.")
    ] = None,
    cloud: Annotated[str | None, typer.Option(help="sandbox or aws (default: the spec's)")] = None,
    region: Annotated[str | None, typer.Option(help="The region (default: the spec's)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Check what a launch needs before anything is created: credentials, zones, the planned
    instance types, the vCPU quotas. Exit 3 when a check fails."""
    from burst import preflight
    from burst.cloud.connect import open_provider
    from burst.plan import plan

    overrides = {k: v for k, v in (("cloud", cloud), ("region", region)) if v is not None}
    try:
        job_spec = load_spec(spec, overrides) if spec else None
        offers = _offers(job_spec, False) if job_spec else None
        capacity = plan(job_spec, offers=offers) if job_spec else None
        subnets = job_spec.network.subnets if job_spec else []
        if job_spec:
            cloud, region = job_spec.cloud, job_spec.region
        cloud, region = cloud or "sandbox", region or "us-east-1"
        try:
            connection = open_provider(cloud, region)
        except CloudError as error:  # no credentials or no network: that is the first check
            done = [preflight.Check("credentials", False, str(error), error.fix)]
        else:
            try:
                if subnets:  # planned within the subnets' zones, as a launch does
                    with contextlib.suppress(CloudError):  # the network check says why
                        zones = sorted(connection.provider.network(subnets).subnets)
                        capacity = plan(job_spec, zones, offers=offers)
                done = preflight.checks(
                    connection.provider, capacity, connection.node_python(), subnets
                )
            finally:
                connection.close()
    except BurstError as error:
        raise exit_for(error, spec, as_json) from None
    if as_json:
        print(json.dumps([check.as_dict() for check in done], indent=2))
    else:
        table = Table(title=f"burst doctor: {cloud} {region}", title_justify="left")
        for column in ("check", "", "detail"):
            table.add_column(column, no_wrap=column != "detail")
        for check in done:
            detail = check.detail + (f"\nfix: {check.fix}" if check.fix else "")
            table.add_row(check.name, "ok" if check.ok else "FAIL", detail)
        out.print(table)
    if not all(check.ok for check in done):
        raise typer.Exit(EXIT_CLOUD)


@sandbox_app.command("up")
def sandbox_up(
    quota: Annotated[
        list[str] | None,
        typer.Option(help="A vCPU quota, e.g. L-34B43A08=640 (spot) or L-1216C47A=64."),
    ] = None,
    limit: Annotated[
        list[str] | None,
        typer.Option(help="A request bucket SIZE/REFILL, e.g. ssm.read=40/40; off: none."),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(help="The instances' image: client (its interpreter) or stock (AL2023's)."),
    ] = None,
) -> None:
    """Start a long-lived sandbox cloud that `burst run` will use, with AWS's limits."""
    from burst.cloud import limits, sandbox

    settings = [
        (sandbox.IMAGE_ENV, [image] if image else None, sandbox.image_from),
        ("BURST_SANDBOX_QUOTAS", quota, limits.quotas_from),
        ("BURST_SANDBOX_LIMITS", limit, limits.buckets_from),
    ]
    for name, values, parse in settings:
        if values:
            try:  # refused here, before a sandbox starts with them
                parse(",".join(values))
            except ValueError as error:
                raise fail(EXIT_BAD_INPUT, str(error)) from None
            os.environ[name] = ",".join(values)  # the sandbox's process inherits them
    try:  # and those set in the environment
        sandbox.check_settings()
    except BurstError as error:
        raise exit_for(error) from None
    running = sandbox.running_sandbox()
    if running and (quota or limit or image):
        raise fail(EXIT_BAD_INPUT, "the sandbox is already up", "burst sandbox down first")
    state = running or sandbox.start_detached()
    out.print(f"sandbox running at {state['endpoint']} (pid {state['pid']})", highlight=False)


def sandbox_counts(instances: list[dict]) -> list[str]:
    """What `burst sandbox status` says of the sandbox's instances (as DescribeInstances gives
    them, every region): each number with what it means."""
    from burst.catalog import SANDBOX_REGIONS

    states: dict[str, int] = {}
    clusters: dict[str, int] = {}
    for instance in instances:
        state = instance["State"]["Name"]
        states[state] = states.get(state, 0) + 1
        if state in ("pending", "running"):
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            cluster = tags.get("burst:cluster", "(no burst:cluster tag)")
            clusters[cluster] = clusters.get(cluster, 0) + 1
    running, pending = states.get("running", 0), states.get("pending", 0)
    stopping = sum(states.get(s, 0) for s in ("shutting-down", "stopping", "stopped"))
    ended = states.get("terminated", 0)
    lines = [
        f"{running} running: each is a process group on this machine (a Dask scheduler or "
        "worker, with its node agent) using its CPU and memory",
        f"{pending} starting (pending) and {stopping} stopping: on their way up or down",
        f"{ended} terminated: ended instances the EC2 API keeps listing, as AWS does for a "
        "while; nothing runs for them and nothing is left of them",
        f"{len(instances)} in all, over the regions {', '.join(SANDBOX_REGIONS)}",
    ]
    if clusters:
        lines.append(
            "live instances by cluster: "
            + ", ".join(f"{c} ({n})" for c, n in sorted(clusters.items()))
            + " (`burst ls` names their jobs; `burst cancel JOB_ID` stops one)"
        )
    return lines


@sandbox_app.command("status")
def sandbox_status() -> None:
    """Whether the sandbox runs, and its instances: what each number means."""
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
        f"sandbox running at {state['endpoint']} (pid {state['pid']}): moto's EC2, S3, SSM "
        "and IAM on this machine; its instances are local processes",
        highlight=False,
    )
    for line in sandbox_counts(described):
        out.print(Text(f"  {line}"), highlight=False)


@sandbox_app.command("down")
def sandbox_down() -> None:
    """Stop the long-lived sandbox and every instance in it."""
    from burst.cloud import sandbox

    try:
        stopped = sandbox.stop_detached()
    except sandbox.NotTheSandbox as error:
        raise fail(
            EXIT_CLOUD, str(error), f"if no sandbox runs, delete {sandbox.state_file()}"
        ) from None
    out.print("sandbox stopped" if stopped else "sandbox was not running")


def main() -> None:
    """The `burst` command."""
    try:
        app()
    finally:
        # Everything is closed by now; the interpreter's last garbage collection would walk
        # every object boto3's models and Dask made (a quarter of a second at exit): frozen
        # objects are left to the operating system.
        python_gc.freeze()


if __name__ == "__main__":
    main()
