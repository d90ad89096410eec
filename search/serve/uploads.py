"""The photo a request carries: a multipart field `image` (or the only file), or the raw body as image/*.

Read through `bodies` (bounded, under a deadline); a multipart body streams
into the form parser, which spools a file past 1 MB to disk.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser  # imported here: not on the first request
from starlette.requests import Request

from indexer.errors import first_line
from search.serve import bodies
from search.serve.errors import ApiError

#: Room for multipart boundaries and headers around the photo itself.
MULTIPART_SLACK = 64 * 1024
RAW_TYPES = ("image/", "application/octet-stream")


def largest_body(request: Request) -> int:
    """The most bytes a photo's request may send: the upload limit, and room for a form around it."""
    slack = MULTIPART_SLACK if media_type(request) == "multipart/form-data" else 0
    return _max_upload(request) + slack


async def photo(request: Request) -> tuple[bytes, str]:
    """The uploaded photo's bytes and name."""
    limit, timeout = _max_upload(request), request.app.state.service.config.read_timeout
    kind = media_type(request)
    multipart = kind == "multipart/form-data"
    if not multipart and not kind.startswith(RAW_TYPES):
        raise ApiError(
            415,
            f"content type {kind or 'missing'!r}: send the photo as multipart/form-data (field 'image') or as an image/* body",
        )
    if multipart:
        data, name = await _form_photo(request, limit, timeout)
    else:
        data, name = await bodies.read(request, limit, timeout), "upload"
    if len(data) > limit:
        raise ApiError(413, f"the photo is larger than the {limit / 2**20:g} MB upload limit")
    if not data:
        raise ApiError(422, "empty body: no photo was sent")
    return data, name


async def _form_photo(request: Request, limit: int, timeout: float) -> tuple[bytes, str]:
    body = bodies.chunks(request, limit + MULTIPART_SLACK, timeout)
    try:
        form = await MultiPartParser(request.headers, body, max_files=2, max_fields=20).parse()
    except MultiPartException as exc:
        raise ApiError(422, f"malformed multipart body: {first_line(exc)}") from None
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        upload = form.get("image") if isinstance(form.get("image"), UploadFile) else (files[0] if len(files) == 1 else None)
        if upload is None:
            raise ApiError(422, "no photo in the form: send it in the field 'image'")
        return await upload.read(), upload.filename or "upload"
    finally:
        await form.close()


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _max_upload(request: Request) -> int:
    return int(request.app.state.service.config.max_upload_mb * 2**20)
