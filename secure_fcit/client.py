"""``python -m secure_fcit.client``: one site of the federation over mutual TLS 1.3.

    python -m secure_fcit.client --config FILE --id client-003 --data FED/clients/client-003 \\
        --certs FED/clients/client-003/certs --state SITE/client-003

The client holds its own data (``<data>/stage-NN/train.json`` in LLaVA JSON, images beside it),
its certificate key (``<certs>/clients/<id>.key``, mode 0600), and under ``--state`` its DP
spend journal and accountant and its round machine between phases. It connects with backoff,
rejoins after a disconnect, answers the coordinator's rounds, refuses rounds over its privacy
budget (and says so here and to the server), and exits when the server says the stream is over.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .errors import SecureFCITError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m secure_fcit.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the federation's TOML config (same as the server's)")
    p.add_argument("--id", required=True, help="this client's id: the common name of its certificate")
    p.add_argument("--data", required=True, help="this client's data folder (stage-NN/train.json)")
    p.add_argument("--state", required=True, help="this client's state folder (spend journal, round machine)")
    p.add_argument("--certs", help="this site's certificate bundle, FED/clients/<id>/certs of `deploy prepare` "
                   "(default: deploy.certs); a folder holding the CA key or another client's key is refused")
    p.add_argument("--host", help="server address (default: deploy.host)")
    p.add_argument("--port", type=int, help="server port (default: deploy.port)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key with a TOML value, e.g. --set deploy.phase_timeout=60")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None, noise_prg=None) -> int:
    """``noise_prg`` is for equality tests only (see ``dp.client.ClientPrivacy``); the command line
    never sets it."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        from .config import load_config, parse_sets
        from .deploy.client import FederationClient

        overrides = parse_sets(args.set) | {
            k: v for k, v in {"deploy.host": args.host, "deploy.port": args.port}.items() if v is not None}
        config = load_config(args.config, overrides)
        client = FederationClient(config, args.id, args.data, args.state, certs=args.certs, noise_prg=noise_prg)
        return asyncio.run(client.run())
    except SecureFCITError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
