"""Reaching the cloud a spec names: the one place where the choice of cloud is made."""

from __future__ import annotations

from dataclasses import dataclass

from burst.cloud import sandbox
from burst.cloud.aws import AwsProvider, client_cidr
from burst.cloud.base import Provider
from burst.cloud.botoerrors import aws_session
from burst.errors import SpecError
from burst.software import client_python


@dataclass
class Connection:
    """A provider, and what reaching it took."""

    provider: Provider
    endpoint: str | None = None  # the sandbox's API endpoint
    private_sandbox: sandbox.Sandbox | None = None  # started for this connection alone
    image: str = "client"  # the sandbox's image: client (its interpreter) or stock (AL2023's)

    def client_cidr(self, private: bool = False) -> str:
        """The only address the scheduler's port is opened to: this machine's (`private`:
        as the VPC sees it, which must then be given; see aws.client_cidr)."""
        return "127.0.0.1/32" if self.endpoint else client_cidr(private)

    def node_python(self) -> str | None:
        """The Python (`3.12`) the nodes must install: the client's, on a stock image (AWS, or
        the sandbox's stock image); None on the sandbox's default image, whose nodes run the
        client's own interpreter."""
        return client_python() if not self.endpoint or self.image == "stock" else None

    def close(self) -> None:
        """Stop the private sandbox, if this connection started one (and its instances)."""
        if self.private_sandbox is not None:
            self.private_sandbox.stop()
            self.private_sandbox = None


def open_provider(cloud: str, region: str, *, start_sandbox: bool = True) -> Connection | None:
    """`aws`: the default credential chain. `sandbox`: the long-lived sandbox when one is up,
    else (with `start_sandbox`) a private one for this connection, else None."""
    if cloud == "aws":
        return Connection(AwsProvider(aws_session(region), region))
    if cloud != "sandbox":
        raise SpecError([f"cloud: {cloud!r} is not accepted; accepted: sandbox, aws"])
    state = sandbox.running_sandbox()
    private = None
    if state is None:
        if not start_sandbox:
            return None
        sandbox.check_settings()  # a bad BURST_SANDBOX_* setting: refused before any start
        private = sandbox.Sandbox().start()
        state = private.state()
    # All sandbox instances share one host, so their ports are chosen freely. The sandbox
    # answers only requests signed with its own keys.
    provider = AwsProvider(
        sandbox.session(state["credentials"]),
        region,
        state["endpoint"],
        scheduler_port=0,
        dashboard_port=0,
        shared_host="127.0.0.1",
    )
    image = state.get("image", "client")  # a sandbox from before images were chosen: client
    return Connection(provider, state["endpoint"], private, image)
