"""A `search image` (or `indexer feedback`) that finds its embedded store held by `search serve` asks that server instead.

The embedded store is one process at a time, so while `search serve` runs on
it, a command-line search could only fail with "store in use". Instead the
server announces itself in the store folder (`serve.json`: its URL, its
process id, its certificate when it serves HTTPS), and a search that finds
the store held by that very process sends it the photos over HTTP: the same
pipeline, the models already warm, the same JSON. The announcement is only
trusted when its process id is the one holding the store's lock, so a stale
file from a killed server is never followed.

Only the standard library is used here: a handed-off search imports neither
the models nor the engine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from indexer import settings
from indexer.errors import BadInputError, OptionError, StoreInUse, StoreUnavailable

ANNOUNCEMENT = "serve.json"
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def announce(folder: Path, url: str, cert: str | None = None, roots: dict[str, str | None] | None = None) -> None:
    """Say in the store folder that this process serves it at `url` (written whole, or not at all); `roots`
    (source -> folder: the DAM, the feedback store) turn the paths its answers give back into this machine's."""
    path = Path(folder) / ANNOUNCEMENT
    partial = path.with_name(f".{ANNOUNCEMENT}.{os.getpid()}")
    try:
        partial.write_text(json.dumps({"url": url, "pid": os.getpid(), "cert": cert, "roots": roots or {}}))
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)  # a read-only store: searches then say "in use", as before


def withdraw(folder: Path) -> None:
    path = Path(folder) / ANNOUNCEMENT
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def server_for(exc: StoreInUse) -> dict | None:
    """The announcement of the `search serve` holding the store, if that is what holds it."""
    try:
        found = json.loads((Path(exc.folder) / ANNOUNCEMENT).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or exc.pid is None or found.get("pid") != exc.pid or not found.get("url"):
        return None
    return found


def query_of(options, locate: str | None) -> dict:
    """Search options (a `SearchOptions`) as /v1/search's query parameters: each field under its own
    name, as `make_options` takes it (the filters as repeated `filter=KEY=VALUE`), so the server builds
    the same options."""
    query = {}
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if field.name == "filters":
            query["filter"] = [f"{key[1:]}!={wanted}" if key.startswith("!") else f"{key}={wanted}" for key, wanted in value]
        else:
            query[field.name] = ("true" if value else "false") if isinstance(value, bool) else value
    if locate:
        query["locate"] = locate
    return query


def search(server: dict, photo: Path, query: dict, *, api_key: str | None = None, timeout: float = 120) -> dict:
    """The server's answer for one photo: one entry of `search image --json`, or the error as ours."""
    from indexer.images import read_file

    data = read_file(photo, label=str(photo))
    try:
        result = call(server, "POST", "/v1/search", query, data=data, media=_media(photo), key=api_key, timeout=timeout)
    except _Refused as refused:
        if refused.code in (413, 415) or (refused.code == 422 and not refused.message.startswith(tuple(query))):
            raise BadInputError(f"{photo}: {refused.message}") from None
        if refused.code == 422:
            raise OptionError(refused.message) from None
        if refused.code == 401:
            raise StoreUnavailable(f"search serve at {server['url']} wants its API key: set CATALOGUE_API_KEY") from None
        raise StoreUnavailable(f"search serve at {server['url']} answered {refused.code}: {refused.message}") from None
    result["query"] = str(photo)
    return _local_images(result, server.get("roots") or {})


def _local_images(result: dict, roots: dict) -> dict:
    """The answer as `search image --json` prints it: each match's `image` the file's absolute path (over
    HTTP it is the image's URL, the server's folders being none of a client's business)."""
    for matches in (result["matches"], *(group["matches"] for group in result["groups"])):
        for match in matches:
            root = roots.get(match.get("source"))
            match["image"] = str(Path(root) / match["path"]) if root else None
    return result


def feedback(server: dict, method: str, path: str, query: dict, *, photo: Path | None = None, data: bytes | None = None) -> dict:
    """A /v1/feedback call to the server holding the store (`indexer feedback` while `search serve` runs);
    `data`, the bytes of `photo`, for a new answer."""
    key = settings.get("feedback_key") or settings.get("api_key")
    try:
        return call(server, method, path, query, data=data, media=_media(photo) if photo else None, key=key)
    except _Refused as refused:
        if refused.code in (404, 413, 415, 422):
            raise BadInputError(f"{photo}: {refused.message}" if photo else refused.message) from None
        if refused.code == 401:
            raise StoreUnavailable(
                f"search serve at {server['url']} wants its feedback key: set CATALOGUE_FEEDBACK_KEY (or CATALOGUE_API_KEY)"
            ) from None
        raise StoreUnavailable(f"search serve at {server['url']} answered {refused.code}: {refused.message}") from None


class _Refused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def call(
    server: dict,
    method: str,
    path: str,
    query: dict,
    *,
    data: bytes | None = None,
    media: str | None = None,
    key: str | None = None,
    timeout: float = 120,
) -> dict:
    """One JSON call to the announced server; _Refused with the status and the one-line error."""
    url = f"{server['url']}{path}" + (f"?{urllib.parse.urlencode(query, doseq=True)}" if query else "")
    headers = {"Content-Type": media} if media else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    context = ssl.create_default_context(cafile=server["cert"]) if server.get("cert") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise _Refused(error.code, _error_line(error).removeprefix("upload: ")) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise StoreUnavailable(f"search serve at {server['url']} holds the store but did not answer: {error}") from None


def _media(photo: Path) -> str:
    return MEDIA_TYPES.get(photo.suffix.lower(), "application/octet-stream")


def _error_line(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read())["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return error.reason or "error"
