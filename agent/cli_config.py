"""`refinery config`: the effective configuration and where each value came from."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("config", help="print the effective configuration and each value's source")
    p.set_defaults(func=lambda args: __import__("config").main())
