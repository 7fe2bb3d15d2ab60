"""``python -m openllm_hub.server MODEL [...]``: the ``serve`` command on its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from openllm_hub.errors import OpenLLMHubError
from openllm_hub.server.cli import add_serve_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openllm_hub.server")
    serve = add_serve_command(parser.add_subparsers(dest="command"))
    args = serve.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.handler(args) or 0)
    except OpenLLMHubError as exc:
        print(f"openllm-hub serve: error: {exc.render()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
