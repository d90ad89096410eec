"""What the `indexer` and `search` commands share: store options, error reporting, output."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from indexer.errors import CatalogueError
from indexer.store.schema import DEFAULT_COLLECTION, collection_name_problem


class Commands(click.Group):
    """A click group whose usage errors (bad option values, unknown options) are one line on stderr, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _check_collection(_ctx, _param, value: str) -> str:
    problem = collection_name_problem(value)
    if problem:
        raise click.BadParameter(f"{value[:80]!r}: {problem}")
    return value


def store_options(command: Callable) -> Callable:
    """--qdrant-path / --qdrant-url / --collection, each also read from the environment."""
    decorators = [
        click.option(
            "--qdrant-path",
            type=click.Path(file_okay=False),
            envvar="CATALOGUE_QDRANT_PATH",
            help="Embedded Qdrant folder [env CATALOGUE_QDRANT_PATH; default ~/.local/share/catalogue-indexer/qdrant].",
        ),
        click.option(
            "--qdrant-url",
            envvar="QDRANT_URL",
            help="Qdrant server URL instead of the embedded store [env QDRANT_URL]; API key from QDRANT_API_KEY.",
        ),
        click.option(
            "--collection",
            default=DEFAULT_COLLECTION,
            show_default=True,
            envvar="CATALOGUE_COLLECTION",
            callback=_check_collection,
            help="Collection name [env CATALOGUE_COLLECTION].",
        ),
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def device_option(command: Callable) -> Callable:
    """--device and --runtime; the device's shape is checked here (exit 2), whether it exists when the model loads."""

    def check(_ctx, _param, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise click.BadParameter(f"{value!r}: use auto, cpu, cuda, cuda:N or mps")
        return value

    command = click.option(
        "--dtype",
        type=click.Choice(("auto", "fp32", "fp16", "bf16")),
        default="auto",
        show_default=True,
        envvar="CATALOGUE_DTYPE",
        help="Precision of torch models: auto is fp16 on a GPU, fp32 on the CPU (ONNX runs fp32) [env CATALOGUE_DTYPE].",
    )(command)
    command = click.option(
        "--runtime",
        type=click.Choice(("auto", "torch", "onnx")),
        default="auto",
        show_default=True,
        envvar="CATALOGUE_RUNTIME",
        help="auto: ONNX Runtime on the CPU (exported once into CATALOGUE_CACHE, ~/.cache/catalogue-indexer/onnx), "
        "torch on a GPU [env CATALOGUE_RUNTIME].",
    )(command)
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        envvar="CATALOGUE_DEVICE",
        callback=check,
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps [env CATALOGUE_DEVICE].",
    )(command)


def _delete_limit(_ctx, _param, value: str):
    from indexer.sync import DeleteLimit

    try:
        return DeleteLimit.parse(value)
    except CatalogueError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"--max-delete {value[:40]!r}: ")) from None


def max_delete_option(command: Callable) -> Callable:
    """How much of the collection one sync (or --watch pass) may delete; shared by `indexer sync` and `search serve`."""
    return click.option(
        "--max-delete",
        metavar="SHARE|COUNT",
        default="50%",
        show_default=True,
        envvar="CATALOGUE_MAX_DELETE",
        callback=_delete_limit,
        help="Refuse (exit 2, nothing changed) to delete more of the collection than this, a share (50%) or a number "
        "of images: a folder that lost most of its files is more often a wrong mount than a retired catalogue. "
        "100% to proceed [env CATALOGUE_MAX_DELETE].",
    )(command)


def model_loading(device: str, runtime: str, dtype: str = "auto") -> dict:
    """How the commands load models: on the device asked for, through the runtime asked for, exports in the user cache."""
    from indexer.encoders import default_cache_dir

    return {"device": device, "runtime": runtime, "dtype": dtype, "cache_dir": default_cache_dir()}


def open_catalogue(qdrant_path: str | None, qdrant_url: str | None, collection: str, *, create: bool = False):
    """The collection, in the store the options name; closed (and its lock released) when the command ends.

    `create`: a writer may make the embedded store's folder; readers refuse a path with no store.
    """
    import os

    from indexer.store import open_store

    if qdrant_path and qdrant_url:
        raise click.UsageError("give --qdrant-path or --qdrant-url, not both")
    api_key = os.environ.get("QDRANT_API_KEY") or None
    if qdrant_url and api_key and qdrant_url.lower().startswith("http://"):
        click.echo(
            "Warning: QDRANT_API_KEY is sent in clear over http://; use an https:// URL beyond a private network.", err=True
        )
    ctx = click.get_current_context()
    store = open_store(
        path=None if qdrant_url else qdrant_path, url=qdrant_url, api_key=api_key, create=create, command=ctx.command_path
    )
    ctx.call_on_close(store.close)
    return store.collection(collection)


def catalogue_or_server(qdrant_path: str | None, qdrant_url: str | None, collection: str):
    """(None, the collection), or (the `search serve` holding the embedded store, None): the command
    then goes through that server (`search.serve.handoff`) instead of failing on the store's lock."""
    from indexer.errors import StoreInUse

    try:
        return None, open_catalogue(qdrant_path, qdrant_url, collection)
    except StoreInUse as exc:
        from search.serve import handoff

        server = handoff.server_for(exc)
        if server is None:
            raise
        return server, None


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, kill, a CI timeout): stopped like Ctrl-C, with a message and exit 143."""


def _terminate(signum, _frame) -> None:
    raise Terminated(signum)


def reports_errors(command: Callable) -> Callable:
    """Turn CatalogueError into one line on stderr and its exit code; Ctrl-C into exit 130, SIGTERM into 143."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminate)
        try:
            return command(*args, **kwargs)
        except CatalogueError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Terminated:
            click.echo("Stopped (SIGTERM). Run the same command again to finish; nothing written is lost.", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("Interrupted. Run the same command again to finish; nothing written is lost.", err=True)
            sys.exit(130)

    return wrapper


def process_age() -> float | None:
    """Seconds since this process started (Linux; None elsewhere): what start-up cost before our code ran."""
    import os

    try:
        with open("/proc/self/stat") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain text table; `align` has one 'l' or 'r' per column (numbers right by default)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(headers)))
    lines = []
    for n, row in enumerate(cells):
        parts = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(row, widths, align)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def progress_bar(total: int, description: str, enabled: bool):
    """A tqdm bar on stderr; silent when disabled or when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=None if enabled else True, dynamic_ncols=True)
