"""``darkcfg zoo list|fetch``: the command's logic (cli.py only registers its arguments)."""

from __future__ import annotations

import argparse
import json

from .errors import DarkcfgError
from .zoo import cache_home, fetch, load_index


def cmd_zoo(args: argparse.Namespace) -> int:
    if args.action == "list":
        models = load_index(args.index)
        if args.json:
            print(json.dumps([m.as_json() for m in models]))
            return 0
        width = max((len(m.name) for m in models), default=0)
        for m in models:
            size = sum(f.bytes for f in m.files) / 1e6
            mark = "" if m.verified else "  [unverified: --trust]"
            shape = f"{m.input[0]}x{m.input[1]}"
            print(f"{m.name:<{width}} {m.task:<9} {shape:<9} {size:7.1f} MB  {m.dataset}{mark}")
        print(f"store: {args.store or cache_home()}")
        return 0
    if not args.names:
        raise DarkcfgError("zoo fetch needs at least one model name (see `darkcfg zoo list`)")
    for name in args.names:
        paths = fetch(name, store=args.store, index=args.index, trust=True if args.trust else None)
        if args.json:
            print(json.dumps({"name": name, "files": {role: str(path) for role, path in paths.items()}}))
        else:
            print(f"{name}: " + ", ".join(f"{role} {path}" for role, path in paths.items()))
    return 0
