"""qledger's errors as gRPC status codes with rich details (google.rpc.Status), in one place.

Servicers raise the transport-neutral errors of ``ledger.errors`` (or let the domain raise
them); ``rpc_method`` turns each into its code, with a BadRequest detail naming the field and
a RetryInfo detail where waiting helps, and a store outage into UNAVAILABLE.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar, cast

import grpc
from eventsourcing.persistence import PersistenceError
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from qledger.ledger.errors import (
    AlreadyExistsError,
    BadSignatureError,
    CallFailedError,
    ContentMismatchError,
    DamagedArtifactError,
    ExhaustedError,
    InvalidRequestError,
    NonCanonicalEntryError,
    NotAuthorisedError,
    NotFoundError,
    OutOfRangeError,
    OversizedEntryError,
    PermissionDeniedError,
    PreconditionError,
    ProofError,
    QledgerError,
    RequestRefusedError,
    RevokedKeyError,
    StoreNotInitialisedError,
    StoreUnavailableError,
    UnauthenticatedError,
    UnknownKeyError,
    UnreadableEntryError,
)

_CODES: list[tuple[type[QledgerError], grpc.StatusCode]] = [
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (ExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (BadSignatureError, grpc.StatusCode.UNAUTHENTICATED),
    (UnknownKeyError, grpc.StatusCode.UNAUTHENTICATED),
    (RevokedKeyError, grpc.StatusCode.UNAUTHENTICATED),
    (NotAuthorisedError, grpc.StatusCode.PERMISSION_DENIED),
    (OversizedEntryError, grpc.StatusCode.INVALID_ARGUMENT),
    (NonCanonicalEntryError, grpc.StatusCode.INVALID_ARGUMENT),
    (ContentMismatchError, grpc.StatusCode.INVALID_ARGUMENT),
    (ProofError, grpc.StatusCode.OUT_OF_RANGE),
    (UnreadableEntryError, grpc.StatusCode.DATA_LOSS),
    (DamagedArtifactError, grpc.StatusCode.DATA_LOSS),
    (StoreNotInitialisedError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
]


def status_for(error: QledgerError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
          field: str | None = None, retry_seconds: int | None = None) -> NoReturn:
    """Abort with ``code``; name the offending request field in a BadRequest detail, and say
    when to try again in a RetryInfo detail."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if field is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]))
        status.details.append(detail)
    if retry_seconds is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_seconds)))
        status.details.append(detail)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returns only by raising")


def abort_for(context: grpc.ServicerContext, error: QledgerError) -> NoReturn:
    field = error.field if isinstance(error, RequestRefusedError) else None
    retry = error.retry_seconds if isinstance(error, ExhaustedError) else None
    message = str(error) if isinstance(error, RequestRefusedError) else error.one_line()
    abort(context, status_for(error), message, field, retry)


def retry_delay(error: grpc.RpcError) -> float | None:
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.seconds) + float(info.retry_delay.nanos) / 1e9
    return None


def field_violations(error: grpc.RpcError) -> list[str]:
    """The field names a rich error names (for clients and tests)."""
    status = rpc_status.from_call(error)
    fields: list[str] = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


def refusal_from(error: grpc.RpcError) -> QledgerError:
    """A failed call as a client meets it: the refusal class its status code stands for (the
    inverse of ``status_for``), carrying the field its BadRequest detail names and ``code``;
    any other failure (unreachable, deadline, internal) as ``CallFailedError``."""
    code = error.code()
    message = str(error.details() or code.name)
    fields = field_violations(error)
    kind = next((k for k, c in _CODES if c == code and issubclass(k, RequestRefusedError)
                 and k is not ExhaustedError), None)
    refusal: RequestRefusedError
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = retry_delay(error)
        refusal = ExhaustedError(message, fields[0] if fields else None,
                                 None if delay is None else int(delay))
    elif kind is not None:
        refusal = kind(message, fields[0] if fields else None)
    else:
        return CallFailedError(message, code.name)
    refusal.code = code.name
    return refusal


F = TypeVar("F", bound=Callable[..., Any])


def _unavailable(exc: PersistenceError) -> str:
    return f"ledger store unavailable, try again later: {type(exc).__name__}: {exc}"


def rpc_method(method: F) -> F:
    """Wrap a servicer method so qledger's errors become their status codes and a store outage
    is UNAVAILABLE, not an opaque UNKNOWN.  Works for unary and server-streaming methods."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except QledgerError as exc:
                abort_for(context, exc)
            except PersistenceError as exc:
                abort(context, grpc.StatusCode.UNAVAILABLE, _unavailable(exc))
        return cast(F, streaming)

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except QledgerError as exc:
            abort_for(context, exc)
        except PersistenceError as exc:
            abort(context, grpc.StatusCode.UNAVAILABLE, _unavailable(exc))
    return cast(F, unary)
