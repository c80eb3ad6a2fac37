"""The `tierflow` command: a thin entrypoint over the services in `shared/`, one module per command
group in this package.

Conventions for every command: `--json` prints stable, documented JSON on stdout; errors go to
stderr as one line without a traceback; exit status 2 for a usage error (bad arguments or
values), 1 for a request a rule refused, 0 on success.
"""

import argparse
import sys
from collections.abc import Sequence

from events import InvalidEvent, tracing
from functions.cli import (
    delivery,
    demo,
    events,
    infra,
    jobs,
    models,
    serve,
    stack,
    tiers,
    webhooks,
)
from functions.cli.parsing import Parser
from shared import logs
from shared.bootstrap import Deps
from shared.config import load_settings
from shared.errors import TierflowError
from shared.extras import missing_extra


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tierflow",
        description="Tierflow: draft scenes cheaply, re-generate approved ones at Production, deliver Production only.",
        epilog="Every command takes --json (except demo). Exit status: 0 ok, 1 refused, 2 usage error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    # In the order `tierflow --help` has always listed them.
    demo.register(commands)
    stack.register_db(commands)
    tiers.register(commands)
    stack.register(commands)
    for group in (events, jobs, models, webhooks, delivery, infra, serve):
        group.register(commands)
    stack.register_config(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args = build_parser().parse_args(argv)
    deps = None
    try:
        settings = load_settings()
        logs.configure(settings.log_format)
        tracing.start_export(f"tierflow-{args.command}")
        deps = Deps(settings)
        return args.run(deps, args)
    except (TierflowError, InvalidEvent) as exc:
        print(f"tierflow: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        needs = missing_extra(exc)
        if needs is None:
            raise
        print(f"tierflow {args.command}: {needs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tierflow: interrupted", file=sys.stderr)
        return 130
    finally:
        if deps is not None:
            deps.close()  # the local workers this command ran finish or give back their jobs


if __name__ == "__main__":
    sys.exit(main())
