"""`refinery config`: the effective configuration, each field's allowed range and where its value came from."""

from __future__ import annotations

import json

import config

WIDE = 110  # columns from which the table has room for the range column


def register(sub) -> None:
    p = sub.add_parser("config", help="print the effective configuration, each value's range and its source")
    p.add_argument("--json", action="store_true", help="one JSON object per field (section, field, value, range, "
                   "source)")
    p.set_defaults(func=show)


def show(args) -> int:
    rows = config.describe(config.load())  # a bad setting: the CLI's one-line error, exit 2
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cols = ["section", "field", "value", "range", "source"]
    if console.width < WIDE:  # a narrow terminal: the range column would fold every row
        cols.remove("range")
    table = Table(title="refinery configuration", caption=None if "range" in cols else
                  f"ranges: a terminal of {WIDE}+ columns, or --json")
    for col in cols:
        table.add_column(col, overflow="fold")
    for row in rows:
        cells = {**row, "value": row["value"] if row["section"] in ("derived", "secret") else repr(row["value"])}
        table.add_row(*(str(cells[c]) for c in cols), style=None if row["source"] == "default" else "bold")
    console.print(table)
    return 0
