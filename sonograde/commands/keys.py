"""Make CURVE keys that encrypt the result stream and let only your displays read it.

Writes into DIR (pyzmq's certificate format, secret files mode 0600):
  server.key, server.key_secret   the publisher's keys (`sonograde run --curve DIR`)
  client.key, client.key_secret   a display's keys (`sonograde overlay --curve DIR`)
  authorized/client.key           the display keys the publisher lets in (add more *.key files here)

On one machine, both sides use the same DIR. For a display on another machine, copy only
client.key_secret and server.key to a DIR there (over a channel you trust, e.g. scp), and
start the publisher with --allow-remote. Existing keys are never overwritten without --force.
See docs/security.md for distribution, rotation and what crosses the network.

Examples:
  sonograde keys --out DIR
  sonograde run --curve DIR                       # encrypted, only authorized displays
  sonograde overlay --curve DIR
  sonograde run --publish tcp://0.0.0.0:5555 --allow-remote --curve DIR
  sonograde keys --out DIR --force                # rotate: new keys, old displays are shut out
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", required=True, help="folder to write the keys to")
    parser.add_argument("--force", action="store_true",
                        help="replace keys already in DIR (every display then needs the new ones)")


def run(args: argparse.Namespace) -> int:
    from sonograde.curve import CurveKeyError, make_keys

    try:
        written = make_keys(args.out, force=args.force)
    except (CurveKeyError, OSError) as error:
        print(f"sonograde keys: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print("keep the *.key_secret files private; a remote display needs client.key_secret and server.key",
          file=sys.stderr)
    return 0
