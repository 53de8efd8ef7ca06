"""`python -m cabinet_reference serve --db PATH (--secret-file F | --secret-env NAME) ...`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cabinet_reference.config import DEFAULT_PREFIX


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cabinet_reference",
        description="The reference personal cabinet (cabinet directory API v1, DESIGN.md §11).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the §11 API and the residents' sign-in pages")
    serve.add_argument("--db", required=True, type=Path, help="SQLite file (created if missing)")
    secret = serve.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret-file", type=Path, help="file holding the shared secret")
    secret.add_argument("--secret-env", help="environment variable holding the shared secret")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100)
    serve.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"the API's path (default {DEFAULT_PREFIX})"
    )
    serve.add_argument("--import-csv", type=Path, help="accounts CSV to load before serving")
    serve.add_argument(
        "--initial-password-env",
        help="environment variable with the password for newly imported accounts"
        " (default: a random one per account, which nobody knows)",
    )
    serve.add_argument("--password-min-length", type=int, default=8)
    serve.add_argument(
        "--secure-cookies", action="store_true", help="mark cookies Secure (behind HTTPS)"
    )
    return parser


def _read_secret(arguments: argparse.Namespace) -> str:
    if arguments.secret_file is not None:
        return str(arguments.secret_file.read_text(encoding="utf-8")).strip()
    value = os.environ.get(arguments.secret_env)
    if value is None:
        raise SystemExit(f"the environment variable {arguments.secret_env} is not set")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import uvicorn

    from cabinet_reference.app import create_app
    from cabinet_reference.importer import import_csv

    secret = _read_secret(arguments)
    try:
        app = create_app(
            arguments.db,
            secret,
            prefix=arguments.prefix,
            password_min_length=arguments.password_min_length,
            secure_cookies=arguments.secure_cookies,
        )
    except ValueError as error:
        print(f"cabinet_reference: {error}", file=sys.stderr)
        return 2
    if arguments.import_csv is not None:
        initial = None
        if arguments.initial_password_env:
            initial = os.environ.get(arguments.initial_password_env)
        result = import_csv(
            app.state.store, arguments.import_csv, app.state.passwords, initial_password=initial
        )
        print(f"imported {result.created} new and {result.updated} existing account(s)")
    base = f"http://{arguments.host}:{arguments.port}"
    print(f"sign-in page: {base}/login")
    print(f"directory API (GATEWAY_DIRECTORY_URL): {base}{app.state.config.prefix}")
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
