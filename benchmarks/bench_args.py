"""The command line the speed benchmarks share: a model, a system and a backend to price it on."""
from __future__ import annotations

import argparse


def model_arguments(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("model", nargs="?", default="meta-llama/Llama-3.1-8B")
    ap.add_argument("--system", default="h200_sxm")
    ap.add_argument("--backend", default=None)
    return ap.parse_args()
