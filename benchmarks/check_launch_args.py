"""Check the vLLM and SGLang command lines `tracecost plan --save DIR` wrote against each engine's own argument
parser (not run by the tests: the engines are not dependencies of tracecost).

    python benchmarks/check_launch_args.py DIR [DIR ...]

Run it with the engines importable, e.g. their wheels unpacked with `pip download vllm sglang --no-deps` and the
few pure-Python modules their parser modules import installed with `pip install --target`, then
``VLLM_TARGET_DEVICE=cpu PYTHONPATH=<vllm>:<sglang>:<deps> python benchmarks/check_launch_args.py DIR``.
vLLM: the `vllm serve` subcommand's parser (vllm.entrypoints.cli.serve.ServeSubcommand); SGLang:
sglang.srt.server_args.ServerArgs.add_cli_args (what `python -m sglang.launch_server` parses). Each command line of
vllm.sh / sglang.sh is parsed as the engine would; an unknown option or a bad choice is reported.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def commands(script: Path, model: str = "org/model") -> list[list[str]]:
    """The engine command lines of a launch script, $MODEL filled in, environment and `&` left off."""
    out = []
    for line in script.read_text().splitlines():
        if line.startswith("CUDA_VISIBLE_DEVICES="):
            out.append(shlex.split(line.split(" ", 1)[1].rstrip(" &").replace('"$MODEL"', model)))
    return out


def vllm_parser():
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
    return lambda argv: parser.parse_args(argv[1:])   # "vllm serve MODEL ..." -> ["serve", MODEL, ...]


def sglang_parser():
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    return lambda argv: parser.parse_args(argv[3:])   # "python -m sglang.launch_server ..."


def main() -> int:
    dirs = [Path(d) for d in sys.argv[1:]]
    failed = 0
    for engine, script, make in (("vllm", "vllm.sh", vllm_parser), ("sglang", "sglang.sh", sglang_parser)):
        parse = make()
        for d in dirs:
            for argv in commands(d / script):
                try:
                    parse(argv)
                    status = "ok"
                except SystemExit:
                    status, failed = "REFUSED", failed + 1
                print(f"{engine:<7}{status:<8}{d.name}: {' '.join(argv[:3])} ... ({len(argv)} words)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
