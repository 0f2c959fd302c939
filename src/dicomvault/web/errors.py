"""HTTP errors with a JSON body naming the problem (PS3.18 8.6 lets the body explain).

Every 4xx/5xx the web layer sends has the same shape::

    {"status": 400, "error": "Bad Request", "message": "offset: 'abc' is not an integer"}

plus optional details (``"parameter"``, ``"allowed"`` …). The archive's typed errors map
onto statuses in one table, :data:`STATUS_OF`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomvault.model.errors import (
    DicomVaultError,
    IndexError_,
    InvalidInstance,
    NotFound,
    OutOfResources,
)
from dicomvault.model.query import InvalidQuery


class HTTPProblem(Exception):
    """Raise from a handler to answer ``status`` with a JSON body.

    Parameters
    ----------
    status : int
        The HTTP status code.
    message : str
        One line naming the problem, e.g. ``"limit: must be 0 or more, got -1"``.
    details
        Extra members of the body (JSON-serialisable).
    headers : dict, optional
        Extra response headers (``Allow``, ``Retry-After`` …).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers


#: The archive's errors → HTTP status (first matching class wins).
STATUS_OF: tuple[tuple[type[DicomVaultError], int], ...] = (
    (NotFound, 404),
    (InvalidQuery, 400),
    (InvalidInstance, 400),
    (OutOfResources, 503),
    (IndexError_, 503),
)


def problem_response(
    status: int, message: str, headers: dict[str, str] | None = None, **details: Any
) -> Response:
    body: dict[str, Any] = {
        "status": status,
        "error": HTTPStatus(status).phrase,
        "message": message,
    }
    body.update(details)
    return JSONResponse(body, status_code=status, headers=headers)


async def _on_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem)
    return problem_response(exc.status, exc.message, exc.headers, **exc.details)


async def _on_http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    message = exc.detail if exc.detail else HTTPStatus(exc.status_code).phrase
    return problem_response(exc.status_code, message, headers)


async def _on_archive_error(_request: Request, exc: Exception) -> Response:
    for cls, status in STATUS_OF:
        if isinstance(exc, cls):
            return problem_response(status, str(exc))
    return problem_response(500, str(exc))


EXCEPTION_HANDLERS = {
    HTTPProblem: _on_problem,
    HTTPException: _on_http_exception,
    DicomVaultError: _on_archive_error,
}
