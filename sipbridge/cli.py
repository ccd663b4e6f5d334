"""The ``sipbridge`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from sipbridge.config import ConfigError, load_config


def _check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    resolved = cfg.model_dump(mode="json")
    for tok in resolved["api"]["tokens"]:  # never print secrets
        if tok.get("value") is not None:
            tok["value"] = "***"
    print(json.dumps(resolved, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    from sipbridge.app import serve

    asyncio.run(serve(cfg))
    return 0


def _analyze(argv: list[str]) -> int:
    from sipbridge.media.analyze import analyze_main

    return analyze_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "analyze":
        return _analyze(argv[1:])
    p = argparse.ArgumentParser(prog="sipbridge", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the bridge")
    r.add_argument("-c", "--config", default="config/example.yaml")
    r.add_argument("--log-level", default="info")
    r.set_defaults(func=_run)
    c = sub.add_parser("check-config", help="validate a config file and print it resolved")
    c.add_argument("file")
    c.set_defaults(func=_check_config)
    sub.add_parser("analyze", help="run recipient detection over a WAV file (see analyze -h)")
    args = p.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
