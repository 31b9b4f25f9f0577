"""botocore's errors as burst's: the provider seam lets no botocore type through."""

from __future__ import annotations

import functools
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from burst.errors import CloudError


def error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


# What to do about the error codes a user can act on; anything else: read the cloud's message.
_FIXES = {
    "UnauthorizedOperation": "grant the IAM policy in scripts/iam-policy.json to your credentials",
    "AccessDenied": "grant the IAM policy in scripts/iam-policy.json to your credentials",
    "AuthFailure": "check your AWS credentials (aws sts get-caller-identity)",
    "ExpiredToken": "renew your AWS credentials (aws sso login, or new keys)",
    "RequestLimitExceeded": "EC2 throttled burst beyond its retries: wait a minute and retry",
}


def as_cloud_error(error: ClientError | BotoCoreError) -> CloudError:
    """botocore's error as burst's: the cloud's code and message, and a fix where one is known."""
    if isinstance(error, ClientError):
        code = error_code(error)
        return CloudError(str(error), _FIXES.get(code), code=code or None)
    return CloudError(f"{type(error).__name__}: {error}", "check your network and credentials")


def cloud_errors(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (ClientError, BotoCoreError) as error:
            raise as_cloud_error(error) from error

    return wrapper


def wrap_public_methods(cls: type) -> type:
    """The provider seam: no botocore type crosses it, whatever the method."""
    for name, value in list(vars(cls).items()):
        if callable(value) and not name.startswith("_"):
            setattr(cls, name, cloud_errors(value))
    return cls
