"""What a model source is, and what the modules that find and read one share: the found config (ModelSource), the
signal that one place does not have a model (NotHere), quiet construction of transformers configs, and the short
text (versions, one-line reasons) their messages are made of."""
from __future__ import annotations

import contextlib
import importlib.metadata
import re
import warnings
from dataclasses import dataclass

CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user typed
    kind: str  # "local" | "bundled" | "hf-cache" | "hub" | "model_type"
    origin: str  # human-readable: the file used, or the transformers default config
    config: dict  # raw config.json contents (for kind model_type: the default config's to_dict())
    path: str | None  # directory or file the config came from (None for model_type)


class NotHere(Exception):
    """One place does not have the model; the message is the short reason shown to the user."""


@contextlib.contextmanager
def quiet_transformers():
    """Config classes log and warn about legacy fields; the CLI prints its own notes."""
    from transformers.utils import logging as hf_logging  # inside: transformers imports torch, a warm run needs neither

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def one_line(text: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
