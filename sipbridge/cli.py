"""The ``sipbridge`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from sipbridge.config import ConfigError, load_config


def _check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    resolved = cfg.model_dump(mode="json")
    secrets = [
        *resolved["api"]["tokens"],
        resolved["webhooks"].get("secret") or {},
        resolved["store"].get("dsn") or {},
    ]
    for tok in secrets:  # never print secrets
        if tok.get("value") is not None:
            tok["value"] = "***"
    print(json.dumps(resolved, indent=2))
    return 0


def _edge_config(args: argparse.Namespace) -> int:
    from sipbridge.edge.generate import write_files

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    if cfg.edge is None:
        print(f"{args.config}: edge: no edge section in this config", file=sys.stderr)
        return 2
    paths = write_files(cfg, Path(args.outdir), args.install_dir, source=args.config)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _run(args: argparse.Namespace) -> int:
    from sipbridge.logfmt import setup_logging

    setup_logging(args.log_level, args.log_format)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    from sipbridge.app import EXIT_START_FAILED, serve
    from sipbridge.errors import StoreError

    try:
        return asyncio.run(serve(cfg))
    except StoreError as e:  # the store cannot be opened or migrated (bad DSN, server down)
        print(f"sipbridge run: cannot start: {e}", file=sys.stderr)
        return EXIT_START_FAILED


def _cdr(args: argparse.Namespace) -> int:
    from sipbridge.cdr import parse_time, write_csv, write_jsonl
    from sipbridge.store import StoreError, open_store

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    try:
        since = parse_time(args.since)
        until = parse_time(args.until) if args.until else None
    except ValueError as e:
        print(f"sipbridge cdr: {e}", file=sys.stderr)
        return 2
    if cfg.store.kind == "sqlite" and not Path(cfg.store.path).exists():
        print(f"sipbridge cdr: no store at {cfg.store.path}", file=sys.stderr)
        return 1
    try:
        store = open_store(cfg.store)
    except StoreError as e:
        print(f"sipbridge cdr: {e}", file=sys.stderr)
        return 1
    try:
        rows = store.cdrs(since, until)
    except StoreError as e:
        print(f"sipbridge cdr: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    write = write_csv if args.format == "csv" else write_jsonl
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            n = write(rows, f)
    else:
        n = write(rows, sys.stdout)
    print(f"{n} CDRs", file=sys.stderr)
    return 0


def _analyze(argv: list[str]) -> int:
    from sipbridge.media.analyze import analyze_main

    return analyze_main(argv)


def _corpus(args: argparse.Namespace) -> int:
    from sipbridge.corpus import detection, hold, regress

    module = {"detection": detection, "hold": hold, "regress": regress}[args.kind]
    seed = module.DEFAULT_SEED if args.seed is None else args.seed
    labels = module.generate(Path(args.out), seed)
    print(f"wrote {len(labels)} files and labels.json to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "analyze":
        return _analyze(argv[1:])
    p = argparse.ArgumentParser(prog="sipbridge", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the bridge")
    r.add_argument("-c", "--config", default="config/example.yaml")
    r.add_argument("--log-level", default="info")
    r.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text (default) or json: one JSON object per line",
    )
    r.set_defaults(func=_run)
    d = sub.add_parser("cdr", help="export call detail records (one per attempt)")
    d.add_argument(
        "-c",
        "--config",
        default="config/example.yaml",
        help="the bridge's config (for the store path)",
    )
    d.add_argument("--since", required=True, help="ISO 8601; attempts that ended from then")
    d.add_argument("--until", help="ISO 8601, exclusive (default: now)")
    d.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    d.add_argument("-o", "--output", help="file to write (default: stdout)")
    d.set_defaults(func=_cdr)
    c = sub.add_parser("check-config", help="validate a config file and print it resolved")
    c.add_argument("file")
    c.set_defaults(func=_check_config)
    e = sub.add_parser(
        "edge-config",
        help="write the edge's Kamailio and rtpengine files from the config's edge section",
    )
    e.add_argument("-c", "--config", required=True)
    e.add_argument(
        "outdir",
        help="folder to write kamailio.cfg, dispatcher.list, tls.cfg, "
        "rtpengine.conf (and topoh.key, kept across runs) into",
    )
    e.add_argument(
        "--install-dir",
        default=None,
        help="where the files will live on the edge host, for the paths inside "
        "them (default: OUTDIR)",
    )
    e.set_defaults(func=_edge_config)
    g = sub.add_parser("corpus", help="generate a labelled test corpus (needs espeak-ng)")
    g.add_argument(
        "kind",
        choices=("detection", "hold", "regress"),
        help="detection: answer/early-media classes; hold: IVR hold step; regress: "
        "the classes real recordings exposed (late greetings, operators, ...)",
    )
    g.add_argument("out", help="folder to write the WAVs and labels.json into")
    g.add_argument("--seed", type=int, default=None, help="generator seed (deterministic)")
    g.set_defaults(func=_corpus)
    sub.add_parser("analyze", help="run recipient detection over a WAV file (see analyze -h)")
    args = p.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
