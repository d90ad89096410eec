"""How both commands fail: one line on stderr and an exit code that means something.

`Commands` is the click group of `indexer` and `search`. Whatever goes wrong
between the command line and the end of a command comes out as one line:
a bad flag or a bad environment variable (exit 2), a `CatalogueError` (its
exit code, indexer/errors.py), Ctrl-C (130) or SIGTERM (143). Programming
errors are not caught: they surface as tracebacks.
"""

from __future__ import annotations

import sys

import click

from indexer.errors import CatalogueError

#: Said after an interruption: every command can be run again to finish.
RESUMABLE = "Run the same command again to finish; nothing written is lost."


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, kill, a CI timeout): stopped like Ctrl-C, with a message and exit 143."""


def _terminate(signum, _frame) -> None:
    raise Terminated(signum)


class Commands(click.Group):
    """A click group whose errors are one line on stderr with their exit code."""

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

    def invoke(self, ctx: click.Context):
        """The sub-command, its options resolved (a default from a bad environment variable is an
        `OptionError` naming it) and run, with our errors as one line and their exit code."""
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except CatalogueError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Terminated:
            click.echo(f"Stopped (SIGTERM). {RESUMABLE}", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo(f"Interrupted. {RESUMABLE}", err=True)
            sys.exit(130)
