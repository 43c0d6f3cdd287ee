"""The Hugging Face hub client: where its cache is, whether it may be asked, and config or code files fetched from it
through huggingface_hub, failing in seconds when it cannot answer. Environment variables are read at each call, so
a late setting is honoured (huggingface_hub reads its own at import)."""
from __future__ import annotations

import os

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from tracer.model_source import CONFIG_NAME, NotHere, one_line

# Offline machines must fail fast; a user may still raise it through the usual huggingface_hub variable.
_DEFAULT_HUB_TIMEOUT_S = 4.0


def hub_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def is_repo_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now; huggingface_hub's own reading (taken at its import) when it is unset."""
    if "HF_HUB_OFFLINE" in os.environ:
        return os.environ["HF_HUB_OFFLINE"].strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE)


def _timeout_s() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT", _DEFAULT_HUB_TIMEOUT_S))
    except ValueError:
        return _DEFAULT_HUB_TIMEOUT_S


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def cached_config(repo_id: str) -> str | None:
    """The cached config.json of `repo_id`, or None."""
    file = try_to_load_from_cache(repo_id, CONFIG_NAME, cache_dir=hub_cache_dir())
    return file if isinstance(file, str) else None  # None, or the marker for a file known not to exist


def download_config(repo_id: str) -> str:
    """config.json of `repo_id` from the hub (saved in the HF cache); NotHere with the reason when it cannot be had.

    hf_hub_download retries a failed connection with backoff (about 20 s) when nothing is cached, so a single metadata
    request with a short timeout and no retries probes the hub first.
    """
    try:
        probe(repo_id, CONFIG_NAME)
        return hf_hub_download(repo_id, CONFIG_NAME, cache_dir=hub_cache_dir(), etag_timeout=_timeout_s(),
                               endpoint=_endpoint())
    except Exception as exc:  # any failure of the hub is a reason to report, not a traceback
        raise NotHere(failure(exc)) from None


def probe(repo_id: str, filename: str) -> None:
    """One metadata request, short timeout, no retries: raises the client's own error when the hub cannot serve it."""
    endpoint = _endpoint()
    get_hf_file_metadata(hf_hub_url(repo_id, filename, endpoint=endpoint), timeout=_timeout_s(), endpoint=endpoint)


def failure(exc: Exception, filename: str = CONFIG_NAME) -> str:
    """The hub's answer as a short reason."""
    if isinstance(exc, OfflineModeIsEnabled):
        return "skipped, huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported)"
    if isinstance(exc, GatedRepoError):
        return "gated repo, accept its licence on huggingface.co and log in with `hf auth login`"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repo (or it is private: log in with `hf auth login`)"
    if isinstance(exc, EntryNotFoundError):
        return f"the repo has no {filename}"
    return f"unreachable ({type(exc).__name__}: {one_line(str(exc), 100)})"
