"""The job spec: what the scientist asks for, validated before anything is launched."""

from __future__ import annotations

import contextlib
import difflib
import re
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from burst.catalog import SANDBOX_REGIONS, SNAPSHOT, families, matching_types
from burst.errors import SpecError

__all__ = ["SpecError"]  # re-exported: spec errors are raised and caught through here too


_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")


_ISO_DURATION = TypeAdapter(timedelta)


def parse_duration(value: Any) -> timedelta:
    """'90s', '15m', '2h', '1h30m' or a number of seconds; or ISO 8601's 'PT15M', as a
    manifest's spec writes durations (a detached job's spec is read back from it)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str) and value.startswith("P"):
        with contextlib.suppress(ValidationError):  # else refused below, with the forms
            if (duration := _ISO_DURATION.validate_python(value)) >= timedelta(0):
                return duration
    accepted = "a duration such as '90s', '15m', '2h' or '1h30m' is accepted"
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not value >= 0:  # also refuses NaN
                raise ValueError(accepted)
            return timedelta(seconds=value)
        match = _DURATION.match(value) if isinstance(value, str) and value.strip() else None
        if not match or not any(match.groups()):
            raise ValueError(accepted)
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"{accepted}, up to 7d") from None


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return (
        "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n) or "0s"
    )


def relative_path(value: str, what: str = "a path inside the spec's folder") -> str:
    """A file field's path: relative, with no '..', so it names something inside its folder
    (symlinks that leave it are refused when the files are read: see burst.sweep)."""
    if not value.strip() or "\x00" in value:
        raise ValueError(f"{what} is accepted, not an empty path")
    if Path(value).is_absolute() or value.startswith("~") or ".." in Path(value).parts:
        raise ValueError(f"{what}, relative and without '..', is accepted")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The most tasks (or rows of parameters) one job may have, checked before any list of them
# is made: a million lines of results is already a big job, and more would exhaust the client.
MAX_TASKS = 1_000_000


def too_many_tasks(count: int, what: str) -> str:
    return f"{what} make {count:,} tasks; accepted: at most {MAX_TASKS:,} tasks per job"


class TaskRange(Strict):
    range: int | list[int] = Field(description="N, [start, stop] or [start, stop, step]")

    @field_validator("range")
    @classmethod
    def _shape(cls, v: int | list[int]) -> int | list[int]:
        bounds = [v] if isinstance(v, int) else v
        if not 1 <= len(bounds) <= 3 or (len(bounds) == 3 and bounds[2] == 0):
            raise ValueError("N, [start, stop] or [start, stop, step] with step != 0 is accepted")
        count = len(range(*bounds))  # computed, not listed
        if count > MAX_TASKS:
            raise ValueError(too_many_tasks(count, "these bounds"))
        return v

    def __len__(self) -> int:
        bounds = [self.range] if isinstance(self.range, int) else self.range
        return len(range(*bounds))

    def values(self) -> list[int]:
        bounds = [self.range] if isinstance(self.range, int) else self.range
        return list(range(*bounds))


class TaskFile(Strict):
    jsonl: str | None = Field(None, description="a JSON-lines file, one task per line")
    csv: str | None = Field(None, description="a CSV file with a header row, one task per row")

    @field_validator("jsonl", "csv")
    @classmethod
    def _inside(cls, v: str | None) -> str | None:
        return None if v is None else relative_path(v)

    @property
    def kind(self) -> str:
        return "csv" if self.csv is not None else "jsonl"

    @property
    def name(self) -> str:
        return self.csv if self.csv is not None else str(self.jsonl)


class ParamFile(Strict):
    csv: str | None = Field(None, description="a CSV file with a header row, one task per row")
    jsonl: str | None = Field(None, description="a JSON-lines file, one object per task")

    @field_validator("jsonl", "csv")
    @classmethod
    def _inside(cls, v: str | None) -> str | None:
        return None if v is None else relative_path(v)


PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


class RunSpec(Strict):
    function: str | None = Field(None, description="'module:callable' found next to the spec")
    command: str | None = Field(None, description="a command template: 'prog --seed {seed}'")
    tasks: TaskRange | TaskFile | list[Any] | None = None
    params: Any = Field(
        None, description="the command's parameters: a grid of names, a file or a list of rows"
    )
    timeout: timedelta | None = Field(None, description="per task, such as '10m'")
    reduce: str | None = Field(None, description="'module:callable' applied to the list of results")
    allow_any_module: bool = Field(
        False,
        description="function and reduce may come from installed modules, not only the "
        "spec's folder",
    )
    retries: int = Field(1, ge=0, le=10)
    fail_fast: bool = Field(
        True, description="stop when the first 5 tasks to end all failed the same way"
    )
    retry_exceptions: bool = Field(
        False, description="retry a function task that raised (else: lost workers, timeouts)"
    )

    @field_validator("params", mode="before")
    @classmethod
    def _param_form(cls, v: Any) -> Any:
        """{csv: file} and {jsonl: file} are files; any other mapping is a grid of names; a
        list holds the rows themselves. One message per problem, in the form that was meant."""
        if v is None:
            return None
        if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in ("csv", "jsonl"):
            if isinstance(next(iter(v.values())), str):
                try:
                    return ParamFile.model_validate(v)
                except ValidationError as error:
                    message = error.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"{next(iter(v))}: {message}") from None
        if isinstance(v, dict) and v:
            grid: dict[str, Any] = {}
            for name, values in v.items():
                if not isinstance(name, str) or not re.fullmatch(PARAM_NAME, name):
                    raise ValueError(
                        f"parameter names are identifiers such as 'seed', not {name!r}"
                    )
                if isinstance(values, dict) and set(values) == {"range"}:
                    try:
                        grid[name] = TaskRange.model_validate(values)
                    except ValidationError as error:
                        message = error.errors()[0]["msg"].removeprefix("Value error, ")
                        raise ValueError(f"{name}.range: {message}") from None
                elif isinstance(values, list) and values and all(map(_scalar, values)):
                    grid[name] = values
                else:
                    raise ValueError(
                        f"{name}: a non-empty list of strings or numbers, or {{range: ...}}, is "
                        f"accepted (got {values!r:.80})"
                    )
            count = 1  # the grid's product, counted before any row is made
            for values in grid.values():
                count *= len(values)
            if count > MAX_TASKS:
                sizes = " x ".join(f"{len(values):,}" for values in grid.values())
                raise ValueError(too_many_tasks(count, f"the grid's {sizes} values"))
            return grid
        if isinstance(v, list) and len(v) > MAX_TASKS:
            raise ValueError(too_many_tasks(len(v), "these rows"))
        if isinstance(v, list) and v:
            for number, row in enumerate(v):
                if not isinstance(row, dict) or not all(
                    isinstance(k, str) and _scalar(x) for k, x in row.items()
                ):
                    raise ValueError(
                        f"row {number} is not a mapping of names to strings or numbers "
                        f"(got {row!r:.80})"
                    )
            return v
        raise ValueError(
            "accepted: a mapping of names to lists or {range: ...} (their product), "
            "{csv: file}, {jsonl: file} or a non-empty list of rows"
        )

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> timedelta | None:
        if v is None:
            return None
        value = parse_duration(v)
        if not timedelta(seconds=1) <= value <= timedelta(days=7):
            raise ValueError("a duration between 1s and 7d is accepted")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> RunSpec:
        if (self.function is None) == (self.command is None):
            raise ValueError(
                "exactly one of 'function' (module:callable) and 'command' (a template) is needed"
            )
        if self.function is not None and self.tasks is None:
            raise ValueError("'function' needs 'tasks'")
        if self.function is not None and self.params is not None:
            raise ValueError("'params' goes with 'command'; 'function' takes 'tasks'")
        if self.command is not None and self.params is None:
            raise ValueError("'command' needs 'params' (one task per row of parameters)")
        if self.command is not None and self.tasks is not None:
            raise ValueError("'command' takes 'params', not 'tasks'")
        return self

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_form(cls, v: Any) -> Any:
        """Pick the form by its key, so an error speaks of that form alone."""
        forms = {"range": TaskRange, "jsonl": TaskFile, "csv": TaskFile}
        if isinstance(v, list):
            if len(v) > MAX_TASKS:
                raise ValueError(too_many_tasks(len(v), "these values"))
            return v
        if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in forms:
            return forms[next(iter(v))].model_validate(v)
        raise ValueError(
            "accepted: {range: N}, {range: [start, stop, step]}, {jsonl: file}, {csv: file} "
            "or a list"
        )

    @field_validator("function", "reduce")
    @classmethod
    def _entry_point(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[\w.]+:[\w.]+", v):
            raise ValueError("'module:callable', such as 'pi:sample', is accepted")
        return v


class Software(Strict):
    pip: list[str] = Field(default_factory=list, description="requirements, such as 'numpy>=1.26'")
    python: str | None = Field(None, description="must be the client's minor version, '3.11'")

    @field_validator("python", mode="before")
    @classmethod
    def _python(cls, v: Any) -> str | None:
        from burst.software import check_python

        return None if v is None else check_python(str(v))

    @field_validator("pip")
    @classmethod
    def _pins(cls, v: list[str]) -> list[str]:
        from burst.software import check_requirements

        check_requirements(v)
        return v


def input_name(item: str) -> str:
    """What a task calls an input: $BURST_INPUT/<name>."""
    return item.rstrip("/").rsplit("/", 1)[-1]


SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$")
PublicIp = Literal["all", "scheduler", "none"]


class Network(Strict):
    """Where the nodes live: the subnets (and so the VPC), which nodes get a public IPv4, and
    the addresses the scheduler's port is opened to."""

    subnets: list[str] = Field(
        default_factory=list,
        description="subnet ids of one VPC; default: the default VPC's subnets",
    )
    public_ip: PublicIp = Field(
        "all", description="all nodes, the scheduler only, or none (private subnets)"
    )
    client_cidrs: list[str] = Field(
        default_factory=list,
        description="who may reach the scheduler's port; default: BURST_CLIENT_CIDR or "
        "this machine's public address",
    )

    @field_validator("subnets")
    @classmethod
    def _subnet_ids(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not isinstance(s, str) or not SUBNET_ID.match(s)]
        if bad:
            raise ValueError(
                f"{bad[0]!r} is not a subnet id; accepted: ids such as 'subnet-0abc12de' "
                "(8 or 17 hex digits)"
            )
        if len(set(v)) != len(v):
            raise ValueError("each subnet once is accepted")
        return v

    @field_validator("client_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        networks = []
        for item in v:
            try:
                networks.append(str(ipaddress.ip_network(str(item), strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an address or network; accepted: CIDRs such as "
                    "203.0.113.7/32 or 10.0.0.0/16"
                ) from None
        return networks


Cloud = Literal["sandbox", "aws"]
SpotPolicy = Literal["spot", "spot-with-fallback", "on-demand"]
Architecture = Literal["x86_64", "arm64"]


class JobSpec(Strict):
    name: str = Field("job", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    cores: int = Field(gt=0, le=100_000, strict=True)
    max_runtime: timedelta = Field(timedelta(hours=1))
    grace: timedelta = Field(timedelta(minutes=5))
    # The scheduler powers the cluster off when no client (a BurstCluster, a Dask Client, a
    # detached job's driver) has been connected this long, or no task has run this long.
    no_client_timeout: timedelta = Field(timedelta(minutes=2))
    idle_timeout: timedelta = Field(timedelta(minutes=30))
    cloud: Cloud = "sandbox"
    region: str = Field("us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    spot: SpotPolicy = "spot-with-fallback"
    instance_types: list[str] = Field(default_factory=lambda: ["c5", "c6i", "m5"], min_length=1)
    scheduler_instance_type: str = "m5.large"
    architecture: Architecture = "x86_64"  # of the workers; the sandbox and its AMI are x86
    min_memory_per_core: float | None = Field(None, gt=0, le=1024)  # GiB per vCPU
    max_pool_share: float = Field(0.4, gt=0, le=1)  # of the cores, per spot pool
    min_cores: int | None = Field(None, gt=0, le=100_000, strict=True)  # default: cores
    max_hourly: Decimal | None = Field(None, gt=0, le=10_000_000)  # USD per hour, whole cluster
    max_cost: Decimal | None = Field(None, gt=0, le=100_000_000)  # USD, the cost bound's limit
    # Each node's root volume (gp3), GiB; default: the image's own (8 GiB on Amazon Linux 2023).
    disk_gb: int | None = Field(None, ge=8, le=16_384, strict=True)
    run: RunSpec | None = None
    outputs: str = "results"
    inputs: list[str] = Field(
        default_factory=list, description="local files or folders next to the spec, or s3://"
    )
    software: Software | None = None
    network: Network = Field(default_factory=Network)

    @field_validator("inputs")
    @classmethod
    def _input_forms(cls, v: list[str], info: ValidationInfo) -> list[str]:
        run = info.data.get("run")
        if v and run is not None and run.command is None:
            raise ValueError(
                "inputs go with run.command; a run.function receives its data as task arguments"
            )
        for item in v:
            if item.startswith("s3://"):
                bucket, _, key = item[5:].partition("/")
                if not bucket or not key or key.endswith("/"):
                    raise ValueError(f"{item!r}: s3://bucket/key of one object is accepted")
                # The nodes' role may read exactly these objects: a wildcard in IAM would
                # grant more than was named; '$' starts a policy variable.
                odd = sorted(set(item) & set("*?$"))
                if odd:
                    raise ValueError(
                        f"{item!r}: {' '.join(odd)} is not accepted in an s3:// input; "
                        "accepted: the exact bucket and key of one object"
                    )
            else:
                try:
                    relative_path(item, "a path inside the spec's folder or s3://bucket/key")
                except ValueError as error:
                    raise ValueError(f"{item!r}: {error}") from None
        names = [input_name(item) for item in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two inputs share the name {twice}; tasks see them by name")
        return v

    @field_validator("outputs")
    @classmethod
    def _outputs_inside(cls, v: str) -> str:
        return relative_path(v, "a folder relative to where burst runs")

    @field_validator("software")
    @classmethod
    def _software_here(cls, v: Software | None, info: ValidationInfo) -> Software | None:
        """Sandbox nodes run the client's own interpreter: what it lacks, they lack."""
        if v is not None and info.data.get("cloud", "sandbox") == "sandbox":
            from burst.software import missing_locally

            missing = missing_locally(v.pip)
            if missing:
                raise ValueError(
                    "sandbox nodes run this Python environment, which lacks "
                    + "; ".join(missing)
                    + f" (install them into {sys.prefix}, or use cloud: aws)"
                )
        return v

    @field_validator(
        "min_memory_per_core", "max_pool_share", "max_hourly", "max_cost", mode="before"
    )
    @classmethod
    def _number_not_boolean(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("a number is accepted, not true or false")
        return v

    @field_validator("min_cores")
    @classmethod
    def _min_cores_within_cores(cls, v: int | None, info: ValidationInfo) -> int | None:
        cores = info.data.get("cores")
        if v is not None and cores is not None and v > cores:
            raise ValueError(f"a number of cores between 1 and cores ({cores}) is accepted")
        return v

    @field_validator("max_runtime", "grace", "no_client_timeout", "idle_timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @field_validator("max_runtime", "no_client_timeout", "idle_timeout")
    @classmethod
    def _runtime_bounds(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=10) <= v <= timedelta(days=7):
            raise ValueError("a duration between 10s and 7d is accepted")
        return v

    @field_validator("region")
    @classmethod
    def _sandbox_region(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("cloud", "sandbox") == "sandbox" and v not in SANDBOX_REGIONS:
            raise ValueError(f"the sandbox hosts {', '.join(SANDBOX_REGIONS)} only")
        return v

    @field_validator("instance_types")
    @classmethod
    def _known_types(cls, v: list[str]) -> list[str]:
        known = families()
        unknown = [t for t in v if t not in SNAPSHOT and t not in known]
        if unknown:
            raise ValueError(
                f"unknown instance types or families {unknown}; accepted: families "
                f"{sorted(known)} or exact types such as 'c5.xlarge'"
            )
        return v

    @field_validator("scheduler_instance_type")
    @classmethod
    def _known_scheduler_type(cls, v: str) -> str:
        if v not in SNAPSHOT:
            raise ValueError(f"an exact instance type such as 'm5.large' is accepted, not {v!r}")
        return v

    @model_validator(mode="after")
    def _deadline_sane(self) -> JobSpec:
        if self.grace > self.max_runtime + timedelta(hours=1):
            raise ValueError("grace must not exceed max_runtime by more than an hour")
        return self

    @model_validator(mode="after")
    def _min_cores_default(self) -> JobSpec:
        if self.min_cores is None:  # frozen: set the default once, here
            object.__setattr__(self, "min_cores", self.cores)
        return self


def capacity_problems(spec: JobSpec) -> list[str]:
    """Constraints no instance type of the snapshot can meet (architecture, memory per core),
    as problem lines naming the field, the value and what would be accepted."""
    types = matching_types(spec.instance_types)
    shaped = [t for t in types if t.architecture == spec.architecture]
    if not shaped:
        others = sorted({t.architecture for t in types})
        suited = sorted(
            {t.family for t in SNAPSHOT.values() if t.architecture == spec.architecture}
        )
        return [
            f"architecture: no type in instance_types {spec.instance_types} is "
            f"{spec.architecture} (got {spec.architecture!r}); accepted: "
            f"{' or '.join(repr(a) for a in others)} with these types, or {spec.architecture} "
            f"families such as {', '.join(suited)}"
        ]
    wanted = spec.min_memory_per_core
    if wanted is not None and not any(t.memory_gib / t.vcpus >= wanted for t in shaped):
        most = max(t.memory_gib / t.vcpus for t in shaped)
        roomy = sorted(
            {
                t.family
                for t in SNAPSHOT.values()
                if t.architecture == spec.architecture and t.memory_gib / t.vcpus >= wanted
            }
        )
        hint = f", or families such as {', '.join(roomy)}" if roomy else ""
        return [
            f"min_memory_per_core: no {spec.architecture} type in instance_types "
            f"{spec.instance_types} has {wanted:g} GiB per vCPU (got {wanted!r}); accepted: "
            f"up to {most:g} with these types{hint}"
        ]
    return []


def _problems(error: ValidationError) -> list[str]:
    lines = []
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "list[")))
        got = repr(e.get("input"))
        shown = "" if e["type"] == "missing" else f" (got {got[:117] + '...' * (len(got) > 120)})"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            accepted = _accepted_fields(e["loc"])
            close = difflib.get_close_matches(str(e["loc"][-1]), accepted, n=1, cutoff=0.6)
            guess = f" (did you mean {close[0]}?)" if close else ""
            message = f"unknown field{guess}; accepted: {', '.join(accepted)}"
        lines.append(f"{field or 'spec'}: {message}{shown}")
    return lines


def _accepted_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = JobSpec
    for part in loc[:-1]:
        model = {"run": RunSpec, "software": Software, "network": Network}.get(str(part), model)
    return sorted(model.model_fields)


def parse_spec(data: Any) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError([f"spec: a mapping of fields is accepted (got {type(data).__name__})"])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_problems(error)) from None
    problems = capacity_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def merged(base: dict, overrides: dict) -> dict:
    """`overrides` over `base`; a section (such as `run`) is merged field by field, so that
    `{"run": {"tasks": [1, 2]}}` keeps the spec's function. A field's value is replaced whole."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = {**merged[key], **value}
        merged[key] = value
    return merged


# A spec is a page of YAML: aliases may not expand it beyond this many values (an alias bomb
# of a few lines would otherwise expand to billions), nor may a spec file be bigger.
MAX_YAML_VALUES = 1_000_000
MAX_SPEC_BYTES = 10 * 1024 * 1024


class SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys (with their path and lines) and documents
    whose aliases expand them beyond MAX_YAML_VALUES, before anything is constructed."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        sizes: dict[int, int] = {}  # by node: an alias is the same node, counted once here

        def expanded(item: yaml.Node) -> int:
            if id(item) not in sizes:
                sizes[id(item)] = 1  # a recursive alias counts once
                children: list[yaml.Node] = []
                if isinstance(item, yaml.SequenceNode):
                    children = item.value
                elif isinstance(item, yaml.MappingNode):
                    children = [part for pair in item.value for part in pair]
                total = 1
                for child in children:
                    total += expanded(child)
                    if total > MAX_YAML_VALUES:
                        break
                sizes[id(item)] = total
            return sizes[id(item)]

        if node is not None:
            self._refuse_duplicates(node)
        if node is not None and expanded(node) > MAX_YAML_VALUES:
            raise SpecError(
                [
                    f"spec: its aliases (*name) expand it to more than {MAX_YAML_VALUES:,} "
                    "values; accepted: a spec that is at most that big when expanded (keep "
                    "long lists of tasks in a file: {jsonl: ...} or {csv: ...})"
                ]
            )
        return node

    def _refuse_duplicates(self, node: yaml.Node) -> None:
        """A key twice in one mapping, named by its dotted path and both lines (each node is
        visited once, so aliases cost nothing here)."""
        seen: set[int] = set()
        pending: list[tuple[yaml.Node, str]] = [(node, "")]
        while pending:
            item, path = pending.pop()
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, yaml.SequenceNode):
                pending += [(child, path) for child in item.value]
            elif isinstance(item, yaml.MappingNode):
                lines: dict[str, int] = {}
                for key_node, value_node in item.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                        key_node, yaml.ScalarNode
                    ):
                        pending.append((value_node, path))
                        continue  # `<<: *base` then a key: an override, as YAML means it
                    key, line = key_node.value, key_node.start_mark.line + 1
                    field = f"{path}.{key}" if path else key
                    if key in lines:
                        raise SpecError(
                            [
                                f"{field}: the key {key!r} appears twice in the same mapping "
                                f"(line {lines[key]} and line {line}); accepted: each key once"
                            ]
                        )
                    lines[key] = line
                    pending.append((value_node, field))


def read_yaml(text: str) -> Any:
    """A spec's YAML: safe, with no duplicate keys and bounded aliases (see SpecLoader)."""
    loader = SpecLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def assignments(items: list[str] | None) -> dict[str, Any]:
    """`--set FIELD=VALUE` items as overrides: `cores=64`, `run.timeout=5m` (dotted for a
    nested field). Each VALUE is read as YAML, as if written in the spec file (`64` is a
    number, `[c5, m5]` a list, `2h` a string); a later item wins. Raises SpecError."""
    overrides: dict[str, Any] = {}
    for item in items or ():
        field, equals, text = item.partition("=")
        field = field.strip()
        if not equals or not _FIELD_PATH.fullmatch(field):
            raise SpecError(
                [
                    f"--set: {item!r} is not accepted; accepted: FIELD=VALUE, such as cores=64 "
                    "or run.timeout=5m"
                ]
            )
        try:
            value = read_yaml(text) if text.strip() else ""
        except yaml.YAMLError as error:
            raise SpecError([f"{field}: --set value {text!r} is not valid YAML: {error}"]) from None
        *sections, name = field.split(".")
        target = overrides
        for section in sections:
            if not isinstance(target.get(section), dict):
                target[section] = {}
            target = target[section]
        target[name] = value
    return overrides


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read and validate a YAML spec without importing its code; raises SpecError."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(
                [f"spec: {str(path)!r} is over {MAX_SPEC_BYTES >> 20} MB; keep data in files"]
            )
        data = read_yaml(path.read_text())
    except OSError as error:
        raise SpecError([f"spec: cannot read {str(path)!r}: {error.strerror}"]) from None
    except yaml.YAMLError as error:
        raise SpecError([f"spec: {str(path)!r} is not valid YAML: {error}"]) from None
    except RecursionError:
        raise SpecError([f"spec: {str(path)!r} is nested too deeply to be a job spec"]) from None
    if isinstance(data, dict) and overrides:
        data = merged(data, overrides)
    return parse_spec(data)
