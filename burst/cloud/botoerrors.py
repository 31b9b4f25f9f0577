"""botocore's errors as burst's: the provider seam lets no botocore type through."""

from __future__ import annotations

import functools
from collections.abc import Callable

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ProfileNotFound,
)

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
    "InvalidClientTokenId": "check your AWS credentials (aws sts get-caller-identity)",
    "SignatureDoesNotMatch": "check your AWS secret key (aws sts get-caller-identity)",
}
NO_CREDENTIALS_FIX = (
    "configure AWS credentials (aws configure, aws sso login, AWS_PROFILE, or "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and check them with "
    "aws sts get-caller-identity; or run on the local sandbox: cloud: sandbox"
)
# One quick question before anything else: a machine with no network fails in seconds, not
# after the adaptive retries of every later call.
_PROBE_CONFIG = Config(
    connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 2}
)


def aws_session(region: str) -> boto3.Session:
    """The default credential chain's session, checked before any cloud call: no credentials,
    a missing profile or a broken config file, then no answer from AWS (STS) or credentials it
    refuses, raise CloudError (exit 3) with what to do."""
    try:
        session = boto3.Session(region_name=region)
        credentials = session.get_credentials()
    except ProfileNotFound as error:
        raise CloudError(
            f"AWS credentials: {error}",
            "create the profile (aws configure --profile NAME) or unset AWS_PROFILE",
        ) from None
    except BotoCoreError as error:  # a broken config or credentials file, partial keys
        raise CloudError(f"AWS credentials: {error}", NO_CREDENTIALS_FIX) from None
    if credentials is None:
        raise CloudError("no AWS credentials were found for cloud: aws", NO_CREDENTIALS_FIX)
    sts = session.client("sts", region_name=region, config=_PROBE_CONFIG)
    try:
        sts.get_caller_identity()
    except (ConnectionError, HTTPClientError) as error:
        raise CloudError(
            f"cannot reach AWS from this machine ({type(error).__name__}: {error})",
            "check this machine's network (proxy, VPN, firewall) and AWS_ENDPOINT_URL if "
            "set; or run on the local sandbox: cloud: sandbox",
        ) from None
    except NoCredentialsError:
        raise CloudError(
            "no AWS credentials were found for cloud: aws", NO_CREDENTIALS_FIX
        ) from None
    except (ClientError, BotoCoreError) as error:
        raise as_cloud_error(error) from None
    return session


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
