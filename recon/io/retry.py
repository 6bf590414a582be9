"""Surviving storage blips: what counts as transient, and one bounded retry loop (issue 21 finding 2).

Two layers, so that each does what it is good at:

* botocore retries single S3 requests itself (:func:`s3_retry_options`: ``standard`` mode, a few
  attempts, connect/read timeouts), which covers throttling and 5xx answers of a live endpoint;
* :func:`call_with_retry` wraps every storage operation of the driver and the workers and covers
  what botocore gives up on (an endpoint that refuses connections for seconds, a reset NFS
  mount): bounded exponential backoff with full jitter, for at most ``max_seconds``.

When storage stays unreachable past the bound, :class:`StorageUnavailable` is raised. It is not a
row error: the worker leaves the row uncommitted (its attempt marker removed) and the driver stops
with exit status 1 and one line (see ``cluster.driver``), so a re-run finishes the rows.
"""
from __future__ import annotations

import errno
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from recon.errors import ReconError

__all__ = ["RetryPolicy", "StorageUnavailable", "call_with_retry", "is_transient", "s3_retry_options"]

log = logging.getLogger("recon.storage")

T = TypeVar("T")

#: errno values of a store that is away, not of a request that is wrong.
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.EAGAIN,
                     errno.ESTALE, errno.EBUSY}
#: Words of S3/GCS answers that say "try again later" (throttling, 5xx); s3fs turns some into plain OSErrors.
_TRANSIENT_WORDS = ("SlowDown", "Throttl", "TooManyRequests", "RequestTimeout", "ServiceUnavailable",
                    "InternalError", "Service Unavailable", "Internal Server Error", "Bad Gateway",
                    "Gateway Timeout", "Could not connect to the endpoint", "Connection was closed",
                    "Connection reset", "Connection refused", "timed out")
#: Exception class names (botocore, aiohttp, fsspec) that mean the endpoint could not be reached.
_TRANSIENT_NAMES = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "ProxyConnectionError", "ClientConnectorError", "ServerDisconnectedError",
                    "ClientConnectionError", "ClientOSError", "FSTimeoutError", "IncompleteRead",
                    "ResponseStreamingError", "HTTPClientError")


class StorageUnavailable(ReconError, RuntimeError):
    """Storage stayed unreachable past the retry bound; the message is one line for the user."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter (``--storage-retries``, ``--storage-retry-max-seconds``).

    Defaults: up to 10 tries of an operation within 120 s, sleeping a random 0..min(10, 0.5 * 2**k) s
    before try k+1; plus botocore's own 3 tries per S3 request with 10 s connect and 60 s read timeouts.
    """

    attempts: int = 10
    max_seconds: float = 120.0
    base_s: float = 0.5
    cap_s: float = 10.0

    def delay(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry)] (no herd of workers retrying in step)."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * (2 ** retry)))


_RNG = random.Random()


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """True for errors of a store that is away or overloaded, False for errors of the request itself.

    Missing objects, permission errors and lost write races are answers, never retried.
    """
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                        NotADirectoryError)):
        return False
    for err in _chain(exc):
        if isinstance(err, (ConnectionError, TimeoutError)):
            return True
        if any(c.__name__ in _TRANSIENT_NAMES for c in type(err).__mro__):
            return True
        if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS:
            return True
        response = getattr(err, "response", None)  # botocore ClientError
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(response.get("Error", {}).get("Code", ""))
            if int(status) >= 500 or int(status) == 429 or any(w in code for w in _TRANSIENT_WORDS):
                return True
        if isinstance(err, OSError) and any(w in str(err) for w in _TRANSIENT_WORDS):
            return True
    return False


def call_with_retry(fn: Callable[..., T], *args: Any, what: str, policy: RetryPolicy | None = None,
                    **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried while it fails with a transient storage error.

    Gives up with :class:`StorageUnavailable` (naming ``what`` and the last error) after
    ``policy.attempts`` tries or once the next sleep would end past ``policy.max_seconds``;
    any other exception passes through at once.
    """
    policy = policy or RetryPolicy()
    start = time.monotonic()
    for retry in range(max(1, policy.attempts)):
        try:
            return fn(*args, **kwargs)
        except (Exception, SystemExit) as exc:
            # SystemExit subclasses carry setup errors raised "from" a storage error (cluster.inputs);
            # a plain SystemExit is a stop request (SIGTERM under Ray) and passes through
            if type(exc) is SystemExit or not is_transient(exc):
                raise
            pause = policy.delay(retry, _RNG)
            spent = time.monotonic() - start
            if retry + 1 >= policy.attempts or spent + pause > policy.max_seconds:
                raise StorageUnavailable(
                    f"storage unreachable for {spent:.0f}s ({retry + 1} tries, --storage-retries "
                    f"{policy.attempts}, --storage-retry-max-seconds {policy.max_seconds:g}) while trying to "
                    f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
            log.warning("storage error while trying to %s (%s: %s); retry %d in %.1fs", what,
                        type(exc).__name__, exc, retry + 1, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises


def s3_retry_options(user: dict[str, Any]) -> dict[str, Any]:
    """s3fs options with botocore's own retries and timeouts, keeping whatever the user set.

    ``standard`` mode retries throttling, 5xx and connection errors per request with its own
    backoff; the user's ``config_kwargs`` (``--storage-option``) win key by key.
    """
    opts = dict(user)
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("retries", {"max_attempts": 3, "mode": "standard"})
    config.setdefault("connect_timeout", 10)
    config.setdefault("read_timeout", 60)
    opts["config_kwargs"] = config
    return opts
