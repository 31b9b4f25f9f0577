"""scripts/iam-policy.json allows every AWS call the client side of burst makes, and refuses
what would let its holder escalate; the policy and the node roles' boundary pass a lint.

The calls are recorded, not guessed: every boto3 session created in this process while the
client side runs for real on the sandbox (a command job with inputs and outputs, live offers, a
garbage collection that deletes an abandoned cluster) gets a botocore hook that keeps each
call's parameters, and the tags of the resources it acts on as they are at that moment. Each
call becomes the authorization requests AWS makes for it (action, resource ARN, condition
context: request tags, resource tags, iam:PermissionsBoundary, iam:PassedToService,
ec2:CreateAction), evaluated against the policy by a small evaluator of IAM's rules (an
explicit Deny wins; else some Allow must match action, resource and every condition). The
nodes' calls are made by their own processes, with the cluster's role, and are not recorded.

What the evaluator cannot know is modelled from AWS's documentation, and said so: which
resources an action authorizes (the Service Authorization Reference), and that a fleet's
instances are authorized with the tags of its launch template as request tags.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import boto3.session
import pytest
import yaml

from burst.catalog import live_offers
from burst.cloud import sandbox as sandbox_module
from burst.cloud.aws import BOUNDARY_NAME, IAM_PATH, AwsProvider
from burst.detached import locate, submit, wait
from burst.errors import CloudError
from burst.gc import collect_garbage
from burst.job import load_job
from burst.runner import run
from tests.conftest import REPO, client
from tests.test_gc import REGION as GC_REGION
from tests.test_gc import abandon

# S3's IAM actions are not always named as its API operations.
S3_ACTIONS = {
    "ListObjects": ["ListBucket"],
    "ListObjectsV2": ["ListBucket"],
    "ListObjectVersions": ["ListBucketVersions"],
    "ListBuckets": ["ListAllMyBuckets"],
    "HeadBucket": ["ListBucket"],
    "HeadObject": ["GetObject"],
    "DeleteObjects": ["DeleteObject", "DeleteObjectVersion"],
    "PutPublicAccessBlock": ["PutBucketPublicAccessBlock"],
    # upload_file's multipart upload: its parts are PutObject, and a failed one is aborted.
    "CreateMultipartUpload": ["PutObject", "AbortMultipartUpload"],
    "UploadPart": ["PutObject"],
    "CompleteMultipartUpload": ["PutObject"],
    "ListMultipartUploads": ["ListBucketMultipartUploads"],
    "ListParts": ["ListMultipartUploadParts"],
    "CopyObject": ["GetObject", "PutObject"],
    "UploadPartCopy": ["GetObject", "PutObject"],
}
# AWS documents that GetCallerIdentity needs no permission (burst asks it for the account).
NEEDS_NO_PERMISSION = {"sts:GetCallerIdentity"}
ACCOUNT = "123456789012"  # moto's
POLICY = REPO / "scripts" / "iam-policy.json"
BOUNDARY = REPO / "scripts" / "iam-boundary.json"



# --------------------------------------------------------------------- the evaluator


@dataclass
class Request:
    """One authorization AWS makes: an action on a resource, with its condition context."""

    action: str
    resource: str
    context: dict[str, str | list[str]] = field(default_factory=dict)


def _listed(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def _like(pattern: str, value: str) -> bool:
    """IAM's wildcards: * any run of characters (none too), ? one; nothing else is special."""
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


OPERATORS = {
    "StringEquals": lambda want, got: want == got,
    "StringLike": _like,
    "ArnEquals": lambda want, got: want == got,
    "ArnLike": _like,
}


def _conditions_hold(conditions: dict, context: dict) -> bool:
    lowered = {k.lower(): v for k, v in context.items()}
    for operator, tests in conditions.items():
        if operator not in OPERATORS:
            raise NotImplementedError(f"the evaluator does not know {operator}: teach it")
        for key, wanted in tests.items():
            got = lowered.get(key.lower())
            if got is None:  # a key absent from the request fails its condition
                return False
            if not any(OPERATORS[operator](w, g) for w in _listed(wanted) for g in _listed(got)):
                return False
    return True


# A policy variable, ${key}, in a Resource; ${*}, ${?} and ${$} are those characters, literal.
VARIABLE = re.compile(r"\$\{([^}]+)\}")
LITERALS = {"*": "*", "?": "?", "$": "$"}


def _resource_like(pattern: str, value: str, context: dict) -> bool:
    """A Resource with policy variables (https://docs.aws.amazon.com/IAM/latest/UserGuide/
    reference_policies_variables.html): each ${key} is replaced by the request's value of
    that key, taken literally (a * in it is no wildcard); a key the request lacks makes the
    resource match nothing (the documentation says so for a variable without a value and no
    default)."""
    lowered = {k.lower(): v for k, v in context.items()}
    regex, end = [], 0
    for found in VARIABLE.finditer(pattern):
        regex.append(_wildcards(pattern[end:found.start()]))
        key = found.group(1)
        if key in LITERALS:
            regex.append(re.escape(LITERALS[key]))
        elif isinstance(lowered.get(key.lower()), str):
            regex.append(re.escape(lowered[key.lower()]))
        else:
            return False
        end = found.end()
    regex.append(_wildcards(pattern[end:]))
    return re.fullmatch("".join(regex), value, flags=re.DOTALL) is not None


def _wildcards(text: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)


def _statement_matches(statement: dict, request: Request) -> bool:
    if "NotAction" in statement or "NotResource" in statement:
        raise NotImplementedError("the evaluator does not know NotAction/NotResource")
    action = request.action.lower()
    if not any(_like(a.lower(), action) for a in _listed(statement["Action"])):
        return False
    if not any(_resource_like(r, request.resource, request.context)
               for r in _listed(statement["Resource"])):
        return False
    return _conditions_hold(statement.get("Condition", {}), request.context)


def allows(policy: dict, request: Request) -> bool:
    """IAM's evaluation within one identity policy: an explicit Deny wins, else an Allow."""
    matching = [s for s in policy["Statement"] if _statement_matches(s, request)]
    if any(s["Effect"] == "Deny" for s in matching):
        return False
    return any(s["Effect"] == "Allow" for s in matching)


def load(path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------ calls to authorizations


@dataclass
class Call:
    service: str
    operation: str
    params: dict
    region: str
    looked_up: dict = field(default_factory=dict)  # resource tags etc. at the time of the call


def _ec2(region: str, kind: str, name: str = "*") -> str:
    return f"arn:aws:ec2:{region}:{ACCOUNT}:{kind}/{name}"


def _request_tags(specs: list[dict] | None, resource_type: str) -> dict[str, str]:
    for spec in specs or []:
        if spec["ResourceType"] == resource_type:
            return {f"aws:RequestTag/{t['Key']}": t["Value"] for t in spec["Tags"]}
    return {}


def _resource_tags(tags: list[dict] | None) -> dict[str, str]:
    return {f"aws:ResourceTag/{t['Key']}": t["Value"] for t in tags or []}


def _created(op: str, region: str, kind: str, specs, resource_type: str) -> list[Request]:
    """Creating a tagged resource: the create action with the request's tags, and CreateTags
    with ec2:CreateAction (AWS authorizes tags on create so)."""
    tags = _request_tags(specs, resource_type)
    requests = [Request(f"ec2:{op}", _ec2(region, kind), tags)]
    if tags:
        requests.append(Request("ec2:CreateTags", _ec2(region, kind),
                                {**tags, "ec2:CreateAction": op}))
    return requests


def _launch(op: str, call: Call, data: dict, subnets: list[str]) -> list[Request]:
    """What launching instances authorizes (RunInstances, and a fleet's launches): the new
    instance and volume with their request tags, network interfaces, the subnet, the image,
    the security groups with their tags, and passing the instance profile's role to EC2."""
    region, looked = call.region, call.looked_up
    specs = data.get("TagSpecifications")
    requests = []
    for action in {op, "RunInstances"}:
        requests += _created(action, region, "instance", specs, "instance")
        requests += _created(action, region, "volume", specs, "volume")
        requests.append(Request(f"ec2:{action}", _ec2(region, "network-interface")))
        requests.append(Request(f"ec2:{action}", f"arn:aws:ec2:{region}::image/{data['ImageId']}"))
        requests += [Request(f"ec2:{action}", _ec2(region, "subnet", s)) for s in subnets]
        for group in data.get("SecurityGroupIds", []):
            requests.append(Request(f"ec2:{action}", _ec2(region, "security-group", group),
                                    _resource_tags(looked["groups"][group])))
    if "IamInstanceProfile" in data:
        requests.append(Request("iam:PassRole", looked["profile_role"],
                                {"iam:PassedToService": "ec2.amazonaws.com"}))
    return [r for r in requests if not (r.action == "ec2:CreateTags" and op == "CreateFleet"
                                        and r.context.get("ec2:CreateAction") == "CreateFleet")]


def _role_arn(call: Call, name: str) -> str:
    path = call.looked_up.get("role_paths", {}).get(name, IAM_PATH)
    return f"arn:aws:iam::{ACCOUNT}:role{path}{name}"


def _parameter_arn(region: str, name: str) -> str:
    account = "" if name.startswith("/aws/service/") else ACCOUNT  # public parameters
    return f"arn:aws:ssm:{region}:{account}:parameter{name}"


S3_BUCKET_OPERATIONS = {
    "CreateBucket", "DeleteBucket", "PutBucketTagging", "GetBucketTagging", "GetBucketLocation",
    "PutPublicAccessBlock", "ListObjectsV2", "ListObjects", "ListObjectVersions", "HeadBucket",
    "ListMultipartUploads",
}


def authorizations(call: Call) -> list[Request]:
    """The authorization requests AWS makes for one call (as its documentation says)."""
    service, op, params, region, looked = (call.service, call.operation, call.params,
                                           call.region, call.looked_up)
    name = f"{service}:{op}"
    if name in NEEDS_NO_PERMISSION:
        return []
    if service == "ec2":
        if op.startswith("Describe"):
            return [Request(name, "*")]  # Describe actions take no resource-level permission
        if op == "CreateSecurityGroup":
            return [*_created(op, region, "security-group", params.get("TagSpecifications"),
                              "security-group"),
                    Request(name, _ec2(region, "vpc", params["VpcId"]))]
        if op == "AuthorizeSecurityGroupIngress":
            group = params["GroupId"]
            return [Request(name, _ec2(region, "security-group", group),
                            _resource_tags(looked["groups"][group])),
                    Request(name, _ec2(region, "security-group-rule"))]
        if op == "CreateLaunchTemplate":
            return _created(op, region, "launch-template", params.get("TagSpecifications"),
                            "launch-template")
        if op == "RunInstances":
            return _launch(op, call, params, [params["SubnetId"]])
        if op == "CreateFleet":
            config = params["LaunchTemplateConfigs"][0]
            template = config["LaunchTemplateSpecification"]["LaunchTemplateId"]
            subnets = [o["SubnetId"] for o in config.get("Overrides", [])]
            return [*_created(op, region, "fleet", params.get("TagSpecifications"), "fleet"),
                    Request(name, _ec2(region, "launch-template", template),
                            _resource_tags(looked["template_tags"])),
                    *_launch(op, call, looked["template_data"], subnets)]
        kinds = {"DeleteFleets": ("fleet", "FleetIds"),
                 "TerminateInstances": ("instance", "InstanceIds"),
                 "DeleteLaunchTemplate": ("launch-template", "LaunchTemplateId"),
                 "DeleteSecurityGroup": ("security-group", "GroupId")}
        if op in kinds:
            kind, key = kinds[op]
            return [Request(name, _ec2(region, kind, i), _resource_tags(looked["tags"][i]))
                    for i in _listed(params[key])]
    if service == "ssm":
        if op == "DescribeParameters":
            return [Request(name, "*")]
        names = _listed(params.get("Names") or params.get("Name") or params.get("Path"))
        requests = [Request(name, _parameter_arn(region, n)) for n in names]
        if op == "PutParameter" and params.get("Tags"):
            requests.append(Request("ssm:AddTagsToResource", _parameter_arn(region, names[0])))
        return requests
    if service == "iam":
        if op == "ListRoles":
            return [Request(name, "*")]
        if op == "GetPolicy":
            return [Request(name, params["PolicyArn"])]
        if "InstanceProfileName" in params:
            path = params.get("Path", IAM_PATH)
            arn = f"arn:aws:iam::{ACCOUNT}:instance-profile{path}{params['InstanceProfileName']}"
            requests = [Request(name, arn)]
            if op == "CreateInstanceProfile" and params.get("Tags"):
                requests.append(Request("iam:TagInstanceProfile", arn))
            return requests
        arn = (f"arn:aws:iam::{ACCOUNT}:role{params['Path']}{params['RoleName']}"
               if op == "CreateRole" else _role_arn(call, params["RoleName"]))
        if op == "CreateRole":
            boundary = params.get("PermissionsBoundary")
        else:  # the boundary the role has (IAM's iam:PermissionsBoundary for PutRolePolicy)
            boundary = looked.get("boundaries", {}).get(params["RoleName"])
        context = {"iam:PermissionsBoundary": boundary} if boundary else {}
        requests = [Request(name, arn, context)]
        if op == "CreateRole" and params.get("Tags"):
            requests.append(Request("iam:TagRole", arn))
        return requests
    if service == "s3":
        actions_ = [f"s3:{a}" for a in S3_ACTIONS.get(op, [op])]
        if op == "ListBuckets":
            resources = ["*"]
        elif op in S3_BUCKET_OPERATIONS:
            resources = [f"arn:aws:s3:::{params['Bucket']}"]
        elif op == "DeleteObjects":
            resources = [f"arn:aws:s3:::{params['Bucket']}/{o['Key']}"
                         for o in params["Delete"]["Objects"]]
        else:
            resources = [f"arn:aws:s3:::{params['Bucket']}/{params['Key']}"]
        return [Request(a, r) for a in actions_ for r in resources]
    if service == "servicequotas" and op == "GetServiceQuota":
        return [Request(name, f"arn:aws:servicequotas:{region}:{ACCOUNT}:"
                              f"{params['ServiceCode']}/{params['QuotaCode']}")]
    raise NotImplementedError(f"no authorization model for {name}: add one")


def _look_up(sandbox, service: str, op: str, params: dict, region: str) -> dict:
    """The resource facts AWS would evaluate, read (outside the recording) before the call."""
    ec2 = client(sandbox, "ec2", region)
    iam = client(sandbox, "iam")
    found: dict = {}

    def group_tags(ids):
        reply = ec2.describe_security_groups(GroupIds=list(ids))["SecurityGroups"]
        return {g["GroupId"]: g.get("Tags", []) for g in reply}

    def profile_role(profile: dict) -> str:
        name = profile.get("Name") or profile["Arn"].rsplit("/", 1)[-1]
        return iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"][
            "Roles"][0]["Arn"]

    if service == "ec2":
        if op == "AuthorizeSecurityGroupIngress":
            found["groups"] = group_tags([params["GroupId"]])
        elif op == "RunInstances":
            found["groups"] = group_tags(params.get("SecurityGroupIds", []))
            found["profile_role"] = profile_role(params["IamInstanceProfile"])
        elif op == "CreateFleet":
            spec = params["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"]
            template = ec2.describe_launch_templates(
                LaunchTemplateIds=[spec["LaunchTemplateId"]])["LaunchTemplates"][0]
            data = ec2.describe_launch_template_versions(
                LaunchTemplateId=spec["LaunchTemplateId"], Versions=[spec["Version"]]
            )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
            found.update(template_tags=template.get("Tags", []), template_data=data,
                         groups=group_tags(data.get("SecurityGroupIds", [])),
                         profile_role=profile_role(data["IamInstanceProfile"]))
        elif op == "TerminateInstances":
            reply = ec2.describe_instances(InstanceIds=params["InstanceIds"])
            found["tags"] = {i["InstanceId"]: i.get("Tags", [])
                             for r in reply["Reservations"] for i in r["Instances"]}
        elif op == "DeleteFleets":
            found["tags"] = {f["FleetId"]: f.get("Tags", [])
                             for f in ec2.describe_fleets(FleetIds=params["FleetIds"])["Fleets"]}
        elif op == "DeleteLaunchTemplate":
            template = ec2.describe_launch_templates(
                LaunchTemplateIds=[params["LaunchTemplateId"]])["LaunchTemplates"][0]
            found["tags"] = {params["LaunchTemplateId"]: template.get("Tags", [])}
        elif op == "DeleteSecurityGroup":
            found["tags"] = group_tags([params["GroupId"]])
    if service == "iam" and "RoleName" in params and op != "CreateRole":
        try:
            role = iam.get_role(RoleName=params["RoleName"])["Role"]
        except iam.exceptions.NoSuchEntityException:
            return found
        found["role_paths"] = {role["RoleName"]: role["Path"]}
        boundary = role.get("PermissionsBoundary", {}).get("PermissionsBoundaryArn")
        found["boundaries"] = {role["RoleName"]: boundary}
    return found


def record_calls(monkeypatch, sandbox) -> list[Call]:
    """Every call made through a boto3 session created from now on, with its parameters and
    the facts about its resources at that moment."""
    calls: list[Call] = []
    for region in sandbox_module.SANDBOX_REGIONS:  # the look-ups' clients, made unrecorded
        client(sandbox, "ec2", region)
    client(sandbox, "iam")
    real_init = boto3.session.Session.__init__

    def record(model, params, context, **kwargs) -> None:
        service, region = model.service_model.signing_name, context.get("client_region")
        looked = _look_up(sandbox, service, model.name, params, region)
        calls.append(Call(service, model.name, dict(params), region, looked))

    def init(self, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        self.events.register("before-parameter-build", record)

    monkeypatch.setattr(boto3.session.Session, "__init__", init)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # boto3.client() makes a new one
    return calls


def refused(policy: dict, calls: list[Call]) -> list[str]:
    """Each authorization of the calls that the policy does not allow, described."""
    found = []
    for call in calls:
        for request in authorizations(call):
            if not allows(policy, request):
                found.append(f"{call.service}:{call.operation} -> {request}")
    return sorted(set(found))


def test_the_policy_allows_every_call_the_client_makes(sandbox, tmp_path, monkeypatch):
    # The test's own setup goes through a client made before recording starts.
    s3 = client(sandbox, "s3")
    external = f"iam-test-inputs-{tmp_path.name[-8:].lower().replace('_', '-')}"
    s3.create_bucket(Bucket=external)
    s3.put_object(Bucket=external, Key="weights.bin", Body=b"\0" * 8)
    (tmp_path / "big.bin").write_bytes(b"\1" * (9 * 1024 * 1024))  # over the multipart threshold
    spec = {
        "name": "iam-probe",
        "cores": 2,
        "max_runtime": "5m",
        "instance_types": ["c5.large"],
        "inputs": ["big.bin", f"s3://{external}/weights.bin"],
        "run": {
            "command": """sh -c 'cd "$BURST_INPUT" && wc -c big.bin weights.bin \
                          > "$BURST_OUTPUT/sizes-$1.txt"' _ {n}""",
            "params": {"n": [1, 2]},
        },
    }
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    calls = record_calls(monkeypatch, sandbox)

    result = run(tmp_path / "probe.yaml")
    assert result.status == "succeeded", result.manifest["failures"]
    sizes = (result.folder / "outputs" / "n=1" / "sizes-1.txt").read_text()
    assert "9437184 big.bin" in sizes and "8 weights.bin" in sizes  # the inputs went through S3
    assert result.manifest["teardown"]["verified"]

    # A detached job: submitted, found again, waited for and collected, on the same policy.
    submitted = submit(load_job(tmp_path / "probe.yaml"))
    manifest = wait(locate(submitted["job_id"]))
    assert manifest["status"] == "succeeded" and manifest["teardown"]["verified"]

    ec2 = sandbox_module.session().client("ec2", endpoint_url=sandbox.endpoint)
    assert live_offers(ec2, "us-east-1", ["c5"])

    cluster_id = f"iam{tmp_path.name[-9:].lower().replace('_', '')}"
    abandon(sandbox, cluster_id, datetime.now(UTC) - timedelta(minutes=1))
    provider = AwsProvider(sandbox_module.session(), GC_REGION, sandbox.endpoint)
    swept = collect_garbage(provider, delete=True)
    assert [c.cluster_id for c in swept] == [cluster_id] and swept[0].teardown.verified

    # The three paths ran what they must have: fleets, prices, transfers, the sweep.
    made = {(c.service, c.operation) for c in calls}
    for call in [("ec2", "CreateFleet"), ("ec2", "DescribeSpotPriceHistory"),
                 ("s3", "CreateMultipartUpload"), ("s3", "UploadPart"), ("s3", "GetObject"),
                 ("s3", "HeadObject"), ("ec2", "DeleteFleets"), ("iam", "ListRoles"),
                 ("s3", "PutObject"), ("s3", "ListObjectsV2"), ("iam", "CreateRole"),
                 ("iam", "PutRolePolicy"), ("ec2", "RunInstances"),
                 ("ec2", "AuthorizeSecurityGroupIngress"), ("ec2", "TerminateInstances")]:
        assert call in made, call
    # Every role was created under the boundary, and the policy allows every authorization.
    boundary = f"arn:aws:iam::{ACCOUNT}:policy{IAM_PATH}{BOUNDARY_NAME}"
    created = [c.params for c in calls if c.operation == "CreateRole"]
    assert created and all(p["PermissionsBoundary"] == boundary for p in created)
    assert refused(load(POLICY), calls) == []


# ---------------------------------------------------------- what the policy must refuse

REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/burst/burst-abc123"
OUR_BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/burst/{BOUNDARY_NAME}"
OURS = {"aws:ResourceTag/burst:managed": "true"}
TAGGED = {"aws:RequestTag/burst:managed": "true"}


@pytest.mark.parametrize("request_, why", [
    (Request("iam:CreateRole", ROLE), "a role without a permissions boundary"),
    (Request("iam:CreateRole", ROLE, {"iam:PermissionsBoundary":
                                      f"arn:aws:iam::{ACCOUNT}:policy/AdministratorAccess"}),
     "a role under another boundary"),
    (Request("iam:PutRolePolicy", ROLE), "a policy on a role without the boundary"),
    (Request("iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/admin",
             {"iam:PermissionsBoundary": OUR_BOUNDARY}), "a role outside /burst/burst-*"),
    (Request("iam:DeleteRolePermissionsBoundary", ROLE), "lifting a role's boundary"),
    (Request("iam:CreatePolicyVersion", OUR_BOUNDARY), "rewriting the boundary"),
    (Request("iam:PassRole", ROLE, {"iam:PassedToService": "lambda.amazonaws.com"}),
     "passing a node role to another service"),
    (Request("iam:PassRole", ROLE), "passing a node role with no service named"),
    (Request("ec2:TerminateInstances", _ec2(REGION, "instance", "i-0theirs")),
     "terminating an instance burst did not tag"),
    (Request("ec2:AuthorizeSecurityGroupIngress", _ec2(REGION, "security-group", "sg-0prod")),
     "opening a security group burst did not make"),
    (Request("ec2:DeleteSecurityGroup", _ec2(REGION, "security-group", "sg-0prod"),
             {"aws:ResourceTag/burst:managed": "false"}), "deleting a group tagged otherwise"),
    (Request("ec2:CreateTags", _ec2(REGION, "instance", "i-0theirs"), TAGGED),
     "tagging an existing resource burst:managed (gc would delete it)"),
    (Request("ec2:RunInstances", _ec2(REGION, "instance")), "an untagged instance"),
    (Request("ec2:CreateFleet", _ec2(REGION, "fleet")), "an untagged fleet"),
    (Request("ec2:RunInstances", _ec2(REGION, "security-group", "sg-0prod")),
     "launching into a group burst did not make"),
    (Request("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/prod/db"),
     "someone else's parameter"),
    (Request("s3:GetObject", "arn:aws:s3:::payroll/2026.csv"), "someone else's bucket"),
])
def test_the_policy_refuses_what_would_escalate(request_, why):
    assert not allows(load(POLICY), request_), why


@pytest.mark.parametrize("request_", [
    Request("iam:CreateRole", ROLE, {"iam:PermissionsBoundary": OUR_BOUNDARY}),
    Request("iam:PassRole", ROLE, {"iam:PassedToService": "ec2.amazonaws.com"}),
    Request("ec2:TerminateInstances", _ec2(REGION, "instance", "i-0ours"), OURS),
    Request("ec2:CreateTags", _ec2(REGION, "instance"), {**TAGGED,
                                                        "ec2:CreateAction": "RunInstances"}),
    Request("ec2:RunInstances", _ec2(REGION, "instance"), TAGGED),
])
def test_the_policy_allows_the_same_calls_done_right(request_):
    """The refusals above are the conditions at work, not a policy that allows nothing."""
    assert allows(load(POLICY), request_)


@pytest.mark.parametrize("request_, why", [
    (Request("iam:CreateRole", ROLE), "a node role creating roles"),
    (Request("iam:PassRole", ROLE, {"iam:PassedToService": "ec2.amazonaws.com"}),
     "a node role passing roles"),
    (Request("ec2:RunInstances", _ec2(REGION, "instance"), TAGGED), "a node launching"),
    (Request("ec2:TerminateInstances", _ec2(REGION, "instance", "i-0theirs")),
     "a node terminating what burst did not tag"),
    (Request("s3:GetObject", "arn:aws:s3:::payroll/2026.csv"), "someone else's bucket"),
    (Request("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/prod/db"),
     "someone else's parameter"),
    (Request("ssm:DeleteParameters", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/burst/x/tls"),
     "deleting parameters"),
])
def test_the_boundary_caps_every_node_role(request_, why):
    assert not allows(load(BOUNDARY), request_), why


def test_the_boundary_allows_what_the_nodes_and_a_detached_driver_do():
    """The driver (burst.drive) reads its bucket and its TLS parameter, writes results, and
    terminates its own cluster's instances; workers fetch and upload through the bucket."""
    cluster = "abc123abc123"
    for request_ in [
        Request("ssm:GetParameter", _parameter_arn(REGION, f"/burst/{cluster}/tls")),
        Request("ssm:PutParameter", _parameter_arn(REGION, f"/burst/{cluster}/scheduler")),
        Request("s3:GetObject", f"arn:aws:s3:::burst-{cluster}/job/driver.pkl"),
        Request("s3:PutObject", f"arn:aws:s3:::burst-{cluster}/job/results.jsonl"),
        Request("s3:ListBucket", f"arn:aws:s3:::burst-{cluster}"),
        Request("ec2:TerminateInstances", _ec2(REGION, "instance", "i-0ours"), OURS),
    ]:
        assert allows(load(BOUNDARY), request_), request_


# ------------------------------------------------------------------------------ lint

# Parliament's findings that stand, each for a reason; anything else fails the test. Keyed by
# (issue, statement Sid or None for the whole policy).
ALLOWED_FINDINGS = {
    ("PERMISSIONS_MANAGEMENT_ACTIONS", None):
        "burst creates a role per cluster: CreateRole and PutRolePolicy only under the "
        "boundary, PassRole only to EC2, all on role/burst/burst-* (tested above)",
    ("PRIVILEGE_ESCALATION", None):
        "PassRole + RunInstances (CreateEC2WithExistingIP): only roles under the boundary, "
        "only to ec2.amazonaws.com, so an instance gets at most the boundary",
    ("RESOURCE_MISMATCH", "CreateOnlyTaggedBurstResources"):
        "the launch actions' other resource types (image, subnet, network interface, used "
        "groups and templates) are in statements of their own, each with its own condition",
    ("RESOURCE_MISMATCH", "LaunchIntoBurstGroupsAndTemplates"):
        "same split: the created resources need aws:RequestTag, the used ones aws:ResourceTag",
    ("RESOURCE_MISMATCH", "LaunchFromTheNetworkAndImages"):
        "same split: subnets, network interfaces, VPCs and public images carry no burst tag",
    ("RESOURCE_MISMATCH", "RulesOfBurstGroups"):
        "a new security-group rule has no tags; its group is allowed in "
        "ChangeOnlyBurstResources only when tagged burst:managed",
}


def _sid_at(text: str, line: int | None) -> str | None:
    """The Sid of the statement that starts at `line` (1-based) of the policy's text."""
    if line is None:
        return None
    for row in text.splitlines()[line - 1 : line + 3]:
        if '"Sid"' in row:
            return row.split(":", 1)[1].strip().strip('",')
    return None


@pytest.mark.parametrize("path", [POLICY, BOUNDARY], ids=["policy", "boundary"])
def test_parliament_finds_nothing_unexplained(path):
    from parliament import analyze_policy_string

    text = path.read_text()
    analysed = analyze_policy_string(text, include_community_auditors=True)
    unexplained = [
        (f.issue, f.detail, f.location)
        for f in analysed.findings
        if (f.issue, _sid_at(text, f.location.get("line"))) not in ALLOWED_FINDINGS
    ]
    assert unexplained == []


def test_every_allowed_finding_is_still_found():
    """An allow-list entry that no longer matches anything is stale: remove it."""
    from parliament import analyze_policy_string

    text = POLICY.read_text()
    found = {(f.issue, _sid_at(text, f.location.get("line")))
             for f in analyze_policy_string(text, include_community_auditors=True).findings}
    assert set(ALLOWED_FINDINGS) <= found


def test_the_evaluator_reads_the_conditions():
    """The evaluator is tested too: a condition on an absent key fails, Deny wins."""
    policy = {"Statement": [
        {"Effect": "Allow", "Action": "ec2:*", "Resource": "*",
         "Condition": {"StringEquals": {"aws:ResourceTag/burst:managed": "true"}}},
        {"Effect": "Deny", "Action": "ec2:TerminateInstances", "Resource": "arn:x/*"},
    ]}
    assert allows(policy, Request("ec2:StopInstances", "arn:y", OURS))
    assert not allows(policy, Request("ec2:StopInstances", "arn:y"))
    assert not allows(policy, Request("ec2:TerminateInstances", "arn:x/1", OURS))
    # Policy variables: replaced by the request's value, literally; absent, nothing matches.
    own = {"Statement": [{"Effect": "Allow", "Action": "s3:PutObject",
                          "Resource": "arn:aws:s3:::b/failed/${aws:userid}/*"}]}
    assert allows(own, Request("s3:PutObject", "arn:aws:s3:::b/failed/R:i-1/x",
                               {"aws:userid": "R:i-1"}))
    assert not allows(own, Request("s3:PutObject", "arn:aws:s3:::b/failed/R:i-2/x",
                                   {"aws:userid": "R:i-1"}))
    assert not allows(own, Request("s3:PutObject", "arn:aws:s3:::b/failed/R:i-1/x"))
    assert not allows(own, Request("s3:PutObject", "arn:aws:s3:::b/failed/R:i-12/x",
                                   {"aws:userid": "R:i-1*"}))  # a * in the value is literal
    assert allows({"Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                  "Resource": "arn:aws:s3:::b/${*}"}]},
                  Request("s3:GetObject", "arn:aws:s3:::b/*"))
    with pytest.raises(NotImplementedError):
        allows({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*",
                               "Condition": {"NumericLessThan": {"k": "1"}}}]},
               Request("a:b", "c", {"k": "0"}))


# ------------------------------------------------------------------------- the code


def test_node_roles_are_created_under_the_boundary(sandbox, monkeypatch):
    from burst import tls
    from burst.cloud import aws
    from burst.cloud.base import ClusterIdentity

    provider = AwsProvider(sandbox_module.session(), REGION, sandbox.endpoint)
    ident = ClusterIdentity("iamboundary01", "job-iamboundary01",
                            datetime.now(UTC) + timedelta(minutes=5))
    provider.prepare(ident, [f"{REGION}a"], "127.0.0.1/32",
                     tls.issue(ident.cluster_id, timedelta(minutes=5)).node_bundle())
    try:
        role = client(sandbox, "iam").get_role(RoleName=ident.name)["Role"]
        assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == OUR_BOUNDARY
    finally:
        assert provider.teardown(ident, wait=30).verified

    # An account without the boundary: refused with the fix, before any role is made.
    monkeypatch.setattr(aws, "BOUNDARY_NAME", "no-such-boundary")
    bare = AwsProvider(sandbox_module.session(), REGION, sandbox.endpoint)
    other = ClusterIdentity("iamboundary02", "job-iamboundary02", ident.deadline)
    with pytest.raises(CloudError, match="no-such-boundary does not exist") as refused:
        bare.prepare(other, [f"{REGION}a"], "127.0.0.1/32",
                     tls.issue(other.cluster_id, timedelta(minutes=5)).node_bundle())
    assert "aws iam create-policy" in refused.value.fix
    assert bare.leftovers(other) == []  # nothing was created
