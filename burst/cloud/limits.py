"""AWS's account limits, enforced by the sandbox so that what passes here has a chance on AWS.

moto has no quotas, no request limits and no throttling. This WSGI middleware sits in front of
moto's app and answers as AWS does when a limit is passed (figures from AWS's documentation):

- EC2 request rate: a token bucket per API action; non-mutating actions (Describe*, Get*)
  100 tokens refilling 20/s, mutating actions 200 refilling 5/s. Past it: HTTP 503
  `RequestLimitExceeded`.
  https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html
- EC2 resource rate: launching draws one token per instance from a bucket of 1,000 refilling
  2/s (RunInstances and EC2 Fleet alike); terminating from a bucket of 1,000 refilling 20/s.
- SSM: GetParameter, GetParameters and GetParametersByPath share 40 transactions per second
  per account and region by default; past it, `ThrottlingException`.
  https://docs.aws.amazon.com/general/latest/gr/ssm.html
- vCPU quotas: running On-Demand Standard instances (L-1216C47A) and Standard Spot requests
  (L-34B43A08) are per-region vCPU pools. A RunInstances past them fails with
  `VcpuLimitExceeded` / `MaxSpotInstanceCountExceeded`; an instant EC2 Fleet answers with
  those codes in its errors and launches nothing. The quotas are served through the Service
  Quotas API (GetServiceQuota, ListServiceQuotas), which moto knows only for VPC.
  https://docs.aws.amazon.com/ec2/latest/instancetypes/ec2-instance-quotas.html

Settable for tests and drills, through the environment of the process that runs the sandbox:
`BURST_SANDBOX_QUOTAS="L-34B43A08=640,L-1216C47A=64"` and
`BURST_SANDBOX_LIMITS="ssm.read=40/40,ec2.launch=1000/2"` (bucket size / refill per second;
`off` turns the request limits off, quotas stay). Requests that carry the hypervisor's user
agent are the emulated cloud itself and are not counted.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from burst.cloud.base import VCPU_QUOTAS, standard_family

# Quota code -> (its name in Service Quotas, the market it bounds).
QUOTAS = {
    VCPU_QUOTAS["on-demand"]: (
        "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
        "on-demand",
    ),
    VCPU_QUOTAS["spot"]: (
        "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
        "spot",
    ),
}
# Generous enough for every example and test; drills set their own.
DEFAULT_QUOTAS = {"L-1216C47A": 5120.0, "L-34B43A08": 5120.0}
# Bucket name -> (size, refill per second).
DEFAULT_BUCKETS = {
    "ec2.non-mutating": (100.0, 20.0),
    "ec2.mutating": (200.0, 5.0),
    "ec2.launch": (1000.0, 2.0),
    "ec2.terminate": (1000.0, 20.0),
    "ssm.read": (40.0, 40.0),
}
SSM_READS = {"GetParameter", "GetParameters", "GetParametersByPath"}
THROTTLED = "Request limit exceeded."
HYPERVISOR_AGENT = "burst-sandbox-hypervisor"
_NON_MUTATING = re.compile(r"^(Describe|Get|List)")
_SCOPE = re.compile(r"Credential=([^/]+)/\d+/([^/]+)/([^/]+)/")


@dataclass
class Bucket:
    """AWS's token bucket: `size` tokens at most, `refill` added every second."""

    size: float
    refill: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.size

    def take(self, count: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.size, self.tokens + (now - self.stamp) * self.refill)
        self.stamp = now
        if count > self.tokens:
            return False
        self.tokens -= count
        return True


def parse_settings(text: str, what: str) -> dict[str, str]:
    """`a=1,b=2` -> {"a": "1", "b": "2"}; a malformed entry is a ValueError naming it."""
    settings = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = entry.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{what}: {entry!r} is not NAME=VALUE")
        settings[name.strip()] = value.strip()
    return settings


def quotas_from(text: str) -> dict[str, float]:
    """BURST_SANDBOX_QUOTAS's value: quota code -> vCPUs."""
    quotas = dict(DEFAULT_QUOTAS)
    for code, value in parse_settings(text, "BURST_SANDBOX_QUOTAS").items():
        if code not in QUOTAS:
            raise ValueError(
                f"BURST_SANDBOX_QUOTAS: unknown quota {code}; known: {', '.join(QUOTAS)}"
            )
        try:
            quotas[code] = float(value)
        except ValueError:
            raise ValueError(f"BURST_SANDBOX_QUOTAS: {code}={value} is not a number") from None
    return quotas


def buckets_from(text: str) -> dict[str, tuple[float, float]] | None:
    """BURST_SANDBOX_LIMITS's value: bucket -> (size, refill/s); None when `off`."""
    if text.strip().lower() == "off":
        return None
    buckets = dict(DEFAULT_BUCKETS)
    for name, value in parse_settings(text, "BURST_SANDBOX_LIMITS").items():
        if name not in DEFAULT_BUCKETS:
            known = ", ".join(DEFAULT_BUCKETS)
            raise ValueError(f"BURST_SANDBOX_LIMITS: unknown bucket {name}; known: {known}")
        size, _, refill = value.partition("/")
        try:
            buckets[name] = (float(size), float(refill or size))
        except ValueError:
            raise ValueError(f"BURST_SANDBOX_LIMITS: {name}={value} is not SIZE/REFILL") from None
    return buckets


def _vcpus(instance_type: str) -> int:
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    info = INSTANCE_TYPES.get(instance_type, {})
    return int(info.get("VCpuInfo", {}).get("DefaultVCpus", 0))


@dataclass
class Launch:
    """What one launch request asks for: instances and standard vCPUs per market."""

    instances: int
    vcpus: dict[str, int]


def _run_instances(params: dict[str, str]) -> Launch:
    count = int(params.get("MaxCount", params.get("MinCount", "1")))
    kind = params.get("InstanceType", "m1.small")
    market = "spot" if params.get("InstanceMarketOptions.MarketType") == "spot" else "on-demand"
    return Launch(count, {market: count * _vcpus(kind) if standard_family(kind) else 0})


def _fleet(params: dict[str, str]) -> Launch:
    """An EC2 Fleet: its target in instances and vCPUs, counted with its smallest weight."""
    overrides = []
    for key, kind in params.items():
        match = re.fullmatch(r"(LaunchTemplateConfigs\.\d+\.Overrides\.\d+)\.InstanceType", key)
        if match:
            overrides.append((float(params.get(match[1] + ".WeightedCapacity", "1")), kind))
    weight, kind = min(overrides) if overrides else (1.0, "m5.large")
    spec = "TargetCapacitySpecification."
    total = float(params.get(spec + "TotalTargetCapacity", "0"))
    spot = float(params.get(spec + "SpotTargetCapacity", "0"))
    demand = float(params.get(spec + "OnDemandTargetCapacity", "0"))
    default = params.get(spec + "DefaultTargetCapacityType", "on-demand")
    rest = max(0.0, total - spot - demand)
    targets = {"spot": spot + (rest if default == "spot" else 0)}
    targets["on-demand"] = demand + (rest if default != "spot" else 0)
    per = _vcpus(kind) if standard_family(kind) else 0
    counts = {market: math.ceil(target / weight) for market, target in targets.items()}
    return Launch(sum(counts.values()), {m: n * per for m, n in counts.items()})


class AwsLimits:
    """WSGI middleware in front of moto: AWS's request limits and vCPU quotas."""

    def __init__(
        self,
        app,
        quotas: dict[str, float] | None = None,
        buckets: dict[str, tuple[float, float]] | None = DEFAULT_BUCKETS,
    ):
        self.app = app
        self.quotas = dict(DEFAULT_QUOTAS if quotas is None else quotas)
        self._sizes = buckets
        self._buckets: dict[tuple, Bucket] = {}
        self._lock = threading.Lock()  # quota check and launch happen as one step
        self.throttled: Counter[str] = Counter()  # calls refused, by bucket
        # Calls seen, by (service, action, caller): "node" for the instances' role keys
        # (temporary, ASIA...), "client" for any other; for benchmarks and drills.
        self.calls: Counter[tuple[str, str, str]] = Counter()

    @classmethod
    def from_environment(cls, app) -> AwsLimits:
        return cls(
            app,
            quotas_from(os.environ.get("BURST_SANDBOX_QUOTAS", "")),
            buckets_from(os.environ.get("BURST_SANDBOX_LIMITS", "")),
        )

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ, start_response):
        if HYPERVISOR_AGENT in environ.get("HTTP_USER_AGENT", ""):
            return self.app(environ, start_response)
        scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        if not scope:
            return self.app(environ, start_response)
        caller = "node" if scope[1].startswith("ASIA") else "client"
        region, service = scope[2], scope[3]
        body = _read_body(environ)
        if service == "ec2":
            query = parse_qs(body.decode())
            self.calls[service, query.get("Action", [""])[0], caller] += 1
            return self._ec2(environ, start_response, region, query)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        action = target.rpartition(".")[2]
        self.calls[service, action, caller] += 1
        if service == "ssm" and action in SSM_READS and not self._take(region, "ssm.read"):
            return _json_error(start_response, "ThrottlingException", "Rate exceeded")
        if service == "servicequotas" and action in ("GetServiceQuota", "ListServiceQuotas"):
            return self._service_quotas(start_response, region, action, json.loads(body or b"{}"))
        return self.app(environ, start_response)

    def _take(self, region: str, bucket: str, key: str = "", count: float = 1.0) -> bool:
        with self._lock:
            return self._take_unlocked(region, bucket, key, count)

    def _take_unlocked(self, region: str, bucket: str, key: str = "", count: float = 1.0) -> bool:
        if self._sizes is None:
            return True
        name = (region, bucket, key)
        if name not in self._buckets:
            self._buckets[name] = Bucket(*self._sizes[bucket])
        if self._buckets[name].take(count):
            return True
        self.throttled[bucket] += 1
        return False

    # ------------------------------------------------------------------- EC2

    def _ec2(self, environ, start_response, region: str, query: dict):
        params = {key: values[0] for key, values in query.items()}
        action = params.get("Action", "")
        kind = "ec2.non-mutating" if _NON_MUTATING.match(action) else "ec2.mutating"
        if not self._take(region, kind, action):
            return _ec2_error(start_response, 503, "RequestLimitExceeded", THROTTLED)
        if action == "TerminateInstances":
            count = sum(1 for key in params if key.startswith("InstanceId."))
            if not self._take(region, "ec2.terminate", count=count):
                return _ec2_error(start_response, 503, "RequestLimitExceeded", THROTTLED)
        if action not in ("RunInstances", "CreateFleet"):
            return self.app(environ, start_response)
        launch = _run_instances(params) if action == "RunInstances" else _fleet(params)
        with self._lock:
            over = self._over_quota(region, launch)
            if over is None and not self._take_unlocked(region, "ec2.launch", "", launch.instances):
                over = ("RequestLimitExceeded", THROTTLED + " (the instance launch rate)")
            if over is None:
                return self.app(environ, start_response)
        code, message = over
        if action == "RunInstances":
            status = 503 if code == "RequestLimitExceeded" else 400
            return _ec2_error(start_response, status, code, message)
        return _fleet_errors(start_response, params, code, message)

    def _over_quota(self, region: str, launch: Launch) -> tuple[str, str] | None:
        used = vcpus_in_use(region)
        for code, (_, market) in QUOTAS.items():
            wanted = launch.vcpus.get(market, 0)
            if wanted and used[market] + wanted > self.quotas[code]:
                limit = f"{self.quotas[code]:g}"
                if market == "spot":
                    return (
                        "MaxSpotInstanceCountExceeded",
                        f"Max spot instance count exceeded: the Spot vCPU limit of {limit} "
                        f"({code}) is in use by {used[market]} vCPUs; {wanted} more asked.",
                    )
                return (
                    "VcpuLimitExceeded",
                    f"You have requested more vCPU capacity than your current vCPU limit of "
                    f"{limit} ({code}) allows for the instance bucket that the specified "
                    f"instance type belongs to ({used[market]} in use, {wanted} asked).",
                )
        return None

    # -------------------------------------------------------- Service Quotas

    def _service_quotas(self, start_response, region: str, action: str, request: dict):
        if request.get("ServiceCode") != "ec2":
            return _json_error(start_response, "NoSuchResourceException", "no such quota")
        if action == "ListServiceQuotas":
            body = {"Quotas": [self._quota(region, code) for code in QUOTAS]}
        elif request.get("QuotaCode") in QUOTAS:
            body = {"Quota": self._quota(region, request["QuotaCode"])}
        else:
            return _json_error(start_response, "NoSuchResourceException", "no such quota")
        return _json(start_response, "200 OK", body)

    def _quota(self, region: str, code: str) -> dict:
        from moto.core.models import DEFAULT_ACCOUNT_ID

        return {
            "ServiceCode": "ec2",
            "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:aws:servicequotas:{region}:{DEFAULT_ACCOUNT_ID}:ec2/{code}",
            "QuotaCode": code,
            "QuotaName": QUOTAS[code][0],
            "Value": self.quotas[code],
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
        }


def vcpus_in_use(region: str) -> dict[str, int]:
    """Standard vCPUs of the region's pending and running instances, per market (moto's state,
    read in this process: the sandbox serves moto in-process)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    used = {"spot": 0, "on-demand": 0}
    for instance in ec2_backends[DEFAULT_ACCOUNT_ID][region].all_instances():
        if instance.state in ("pending", "running") and standard_family(instance.instance_type):
            market = "spot" if instance.lifecycle == "spot" else "on-demand"
            used[market] += _vcpus(instance.instance_type)
    return used


# ------------------------------------------------------------------ replies


def _read_body(environ) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
    return body


def _ec2_error(start_response, status: int, code: str, message: str):
    reason = {400: "Bad Request", 503: "Service Unavailable"}[status]
    body = (
        f"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>{code}</Code>"
        f"<Message>{message}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    start_response(f"{status} {reason}", [("Content-Type", "text/xml")])
    return [body]


def _fleet_errors(start_response, params: dict, code: str, message: str):
    """An instant fleet that launched nothing, with the error per override, as EC2 answers."""
    spec = "TargetCapacitySpecification.DefaultTargetCapacityType"
    lifecycle = "spot" if params.get(spec) == "spot" else "on-demand"
    items = []
    for key, kind in params.items():
        match = re.fullmatch(r"(LaunchTemplateConfigs\.(\d+))\.Overrides\.\d+\.InstanceType", key)
        if not match:
            continue
        prefix = key.rpartition(".")[0]
        template = params.get(match[1] + ".LaunchTemplateSpecification.LaunchTemplateId", "")
        subnet = params.get(prefix + ".SubnetId", "")
        items.append(
            "<item><launchTemplateAndOverrides><launchTemplateSpecification>"
            f"<launchTemplateId>{template}</launchTemplateId></launchTemplateSpecification>"
            f"<overrides><instanceType>{kind}</instanceType><subnetId>{subnet}</subnetId>"
            f"</overrides></launchTemplateAndOverrides><lifecycle>{lifecycle}</lifecycle>"
            f"<errorCode>{code}</errorCode><errorMessage>{message}</errorMessage></item>"
        )
    body = (
        "<?xml version='1.0' encoding='UTF-8'?>"
        '<CreateFleetResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<requestId>{uuid.uuid4()}</requestId><fleetId>fleet-{uuid.uuid4()}</fleetId>"
        f"<errorSet>{''.join(items)}</errorSet><fleetInstanceSet/></CreateFleetResponse>"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/xml")])
    return [body]


def _json(start_response, status: str, body: dict):
    start_response(status, [("Content-Type", "application/x-amz-json-1.1")])
    return [json.dumps(body).encode()]


def _json_error(start_response, code: str, message: str):
    return _json(start_response, "400 Bad Request", {"__type": code, "message": message})
