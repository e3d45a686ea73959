"""The ``fishdip`` admin command.

    fishdip keys create --project NAME [--name N]   create a key (and the project); prints it once
    fishdip keys revoke KEY_ID                      refused by the API within FISHDIP_AUTH_CACHE_SECONDS
    fishdip keys list
    fishdip migrate                                 alembic upgrade head
    fishdip serve | worker | allocator ...          handled by worker.cli

The database is the one in the settings (FISHDIP_DATABASE_URL); ``--database-url``
overrides it for one command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from store.db import make_engine, make_session_factory, session_scope
from store.keys import create_key, list_keys, revoke_key
from store.settings import get_settings

DELEGATED = ("serve", "worker", "allocator")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fishdip", description="fishdip administration")
    parser.add_argument("--database-url", help="override FISHDIP_DATABASE_URL")
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key (the project is created if needed)")
    create.add_argument("--project", required=True, help="project name")
    create.add_argument("--name", default="", help="a label for the key")
    revoke = keys.add_parser(
        "revoke",
        help="revoke an API key (refused within FISHDIP_AUTH_CACHE_SECONDS, default 5 s)",
        description="Revoke an API key. Each API process caches keys it has seen for "
        "FISHDIP_AUTH_CACHE_SECONDS (default 5), so running processes refuse the key within that time.",
    )
    revoke.add_argument("key_id")
    keys.add_parser("list", help="list API keys (never their secrets)")
    sub.add_parser("migrate", help="upgrade the database schema to the latest revision")
    for name in DELEGATED:
        sub.add_parser(name, help=f"see 'fishdip {name} --help'", add_help=False)
    return parser


def _keys(args: argparse.Namespace, url: str, out: TextIO) -> int:
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            if args.keys_command == "create":
                created = create_key(session, args.project, args.name)
                out.write(f"key id:  {created.key_id}\n")
                out.write(f"project: {created.project_name} ({created.project_id})\n")
                out.write(f"secret:  {created.secret}\n(shown once: store it now)\n")
                return 0
            if args.keys_command == "revoke":
                if not revoke_key(session, args.key_id):
                    sys.stderr.write(f"no key {args.key_id!r}\n")
                    return 1
                out.write(f"revoked {args.key_id}\n")
                return 0
            for key, project in list_keys(session):
                state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
                out.write(f"{key.id}\t{project.name}\t{key.name}\t{state}\n")
            return 0
    finally:
        engine.dispose()


def _delegate(argv: Sequence[str]) -> int:
    try:
        from worker.cli import main as worker_main
    except ImportError:
        sys.stderr.write(f"'fishdip {argv[0]}' needs the worker package (worker.cli), not installed\n")
        return 2
    return int(worker_main(list(argv)) or 0)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv)
    args = _parser().parse_args(argv)
    url = args.database_url or get_settings().database_url
    stream = out or sys.stdout
    if args.command == "migrate":
        from store.migrate import upgrade_head

        upgrade_head(url)
        stream.write("database is at the latest revision\n")
        return 0
    if args.command == "keys":
        return _keys(args, url, stream)
    return 2


if __name__ == "__main__":
    sys.exit(main())
