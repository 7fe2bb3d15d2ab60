"""``torchrun ... -m openllm_hub_glm130b MODEL [options]``: one tensor-parallel rank per process.

Rank 0 streams the output; the others follow. Single machine without torchrun:
``openllm-hub glm130b-run MODEL --nproc N``.
"""

from __future__ import annotations

import argparse
import sys

from openllm_hub.plugin import OpenLLMHubError


def _follower(model: object) -> None:
    """Ranks other than 0 never run a job (they follow rank 0's engine calls)."""


def main(argv: list[str] | None = None) -> int:
    from openllm_hub_glm130b.commands import add_run_arguments, job_from_args, spec_from_args
    from openllm_hub_glm130b.launch import torchrun_main

    parser = argparse.ArgumentParser(prog="python -m openllm_hub_glm130b", description=__doc__)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    try:
        import os

        import torch

        local = int(os.environ.get("LOCAL_RANK", "0"))
        kind = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() > local else "cpu"
        spec = spec_from_args(args, kind)
        rank = int(os.environ.get("RANK", "0"))
        torchrun_main(spec, job_from_args(args) if rank == 0 else _follower)
    except OpenLLMHubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
