"""``resnets weights list`` (the known pretrained weights: name, top-1, size, licence, cached or not) and
``resnets weights get NAME`` (fetch one into its cache, checked, and print its path)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("weights", help="known pretrained weights: list them, or get one by name",
                              description="Pretrained weights by name (see docs/weights.md). Each name works "
                                          "wherever a weights file does: --weights NAME, --init NAME, "
                                          "create_model(arch, weights=NAME).")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    ls = sub.add_parser("list", help="the table: name, top-1, size, licence, cached or not")
    ls.add_argument("--arch", default=None, metavar="NAME", help="only the weights of this model (e.g. resnet50)")
    ls.add_argument("--json", action="store_true", help="every entry's fields as JSON")
    ls.set_defaults(func=run_list)
    get = sub.add_parser("get", help="download NAME into its cache (checked) and print the file's path")
    get.add_argument("name", metavar="NAME", help="a name from resnets weights list, e.g. resnet50.tv2_in1k")
    get.add_argument("--timeout", type=float, default=30.0, metavar="S",
                     help="seconds a connection or a read may wait (default 30)")
    get.add_argument("--attempts", type=int, default=4, metavar="N",
                     help="connections tried, each resuming where the last stopped (default 4)")
    get.add_argument("--no-progress", dest="progress", action="store_false", help="no progress on stderr")
    get.set_defaults(func=run_get)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_list(args: argparse.Namespace) -> int:
    import json

    from ..pretrained.cache import is_cached
    from ..pretrained.table import entries, entry_to_dict

    rows = [e for e in entries() if args.arch is None or e.arch == args.arch]
    if args.json:
        print(json.dumps([{**entry_to_dict(e), "cached": is_cached(e)} for e in rows], indent=2))
        return 0
    table = [("name", "top-1", "size", "licence", "cached")]
    for e in rows:
        table.append((e.name, f"{e.top1:.2f}%" if e.top1 else "-", f"{e.size_mb:.1f} MB" if e.size_mb else "-",
                      e.licence.split(";")[0], "yes" if is_cached(e) else "no"))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w) if i != 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
    return 0


def run_get(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..pretrained import fetch, lookup
    from ..pretrained.download import Limits

    if args.timeout <= 0 or args.attempts < 1:
        raise UserError("--timeout must be positive and --attempts at least 1")
    entry = lookup(args.name)
    path = fetch(entry, limits=Limits(timeout=args.timeout, attempts=args.attempts), progress=args.progress)
    print(path)
    return 0
