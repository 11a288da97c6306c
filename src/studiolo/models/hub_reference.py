"""What `studiolo get` is asked for, in words: parsing a Hugging Face reference (``owner/repo``,
``owner/repo@Q4_K_M``, a hub URL naming a repo or one file), choosing the GGUF model among a
repo's files by quantization (a split model counts once, by its first shard, and brings every
shard along), and the errors a download can end with. No network here: models/download.py does
the fetching.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from studiolo.domain.errors import Kind, StudioloError
from studiolo.models.split_gguf import is_later_shard, shard_number, split_prefix

DEFAULT_ENDPOINT = "https://huggingface.co"  # HF_ENDPOINT overrides it (a mirror, a test's fake hub)
DEFAULT_QUANTIZATION = "Q4_K_M"  # the usual size/quality trade-off, LM Studio's default pick too
HUB_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})


class DownloadError(StudioloError):
    """A download that cannot happen or did not finish; the message names the problem in one line.
    Unless a subclass says otherwise it is the hub's failure (kind upstream: a 502)."""

    kind: ClassVar[Kind] = "upstream"
    code = "download_failed"


class InvalidModelReference(DownloadError):
    kind = "invalid"
    code, param = "invalid_model_reference", "model"


class RepoNotFound(DownloadError):
    kind = "not_found"
    code, param = "repo_not_found", "model"


class RepoGated(DownloadError):
    kind = "forbidden"
    code, param = "repo_gated", "model"


class FileNotFound(DownloadError):
    kind = "not_found"
    code, param = "file_not_found", "model"


class QuantizationNotFound(DownloadError):
    kind = "not_found"
    code, param = "quantization_not_found", "quantization"


class AmbiguousChoice(DownloadError):
    kind = "invalid"
    code, param = "quantization_required", "quantization"


class HubUnreachable(DownloadError):
    code = "hub_unreachable"


class ChecksumMismatch(DownloadError):
    code = "checksum_mismatch"


class AlreadyDownloading(DownloadError):
    code = "already_downloading"


class FolderTaken(DownloadError):
    kind = "conflict"
    code, param = "model_folder_taken", "model"


class DownloadCancelled(DownloadError):
    code = "cancelled"


# --- what the user asked for -------------------------------------------------------------

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"  # Hugging Face's rule for owner and repo names
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")


@dataclass(frozen=True)
class ModelReference:
    repo_id: str
    revision: str | None = None  # None: the repo's default branch
    filename: str | None = None  # a URL naming one file picks it
    quantization: str | None = None  # from an ``owner/repo@Q4_K_M`` suffix


# A quantization is matched against file names, and a file name and revision go into the hub's URLs
# and (the file's base name) into a path on disk: refused before any network unless plainly a name.
_QUANTIZATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_PATH_SEGMENT = re.compile(r"[^\\/\x00-\x1f]{1,255}")


def check_quantization(quantization: str | None, param: str = "quantization") -> None:
    """A quantization is a short name (Q4_K_M, IQ2_XXS, F16, bf16): letters, digits, ``_.+-``."""
    if quantization is None:
        return
    if not _QUANTIZATION.fullmatch(quantization) or ".." in quantization:
        error = InvalidModelReference(f"'{quantization[:100]}' is not a quantization name (such as Q4_K_M: letters, "
                                      "digits, '_', '.', '+' and '-', at most 64)")
        error.param = param
        raise error


def _check_file_path(filename: str, text: str) -> None:
    """A file inside a repo: segments that are names, none of them '.' or '..'."""
    segments = filename.split("/")
    if any(segment in (".", "..") or not _PATH_SEGMENT.fullmatch(segment) for segment in segments):
        raise InvalidModelReference(f"'{text[:200]}' names the file '{filename[:200]}', which is not a path inside "
                                    "the repo ('..', '.', empty or control characters)")


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def parse_reference(model: str) -> ModelReference:
    text = model.strip()
    if not text:
        raise InvalidModelReference("no model given: name a Hugging Face repo (owner/repo) or a huggingface.co URL")
    if "://" in text or text.split("/", 1)[0].lower() in HUB_HOSTS:
        return _parse_url(text)
    repo_id, _, quantization = text.partition("@")
    if not _REPO_ID.fullmatch(repo_id):
        raise InvalidModelReference(f"'{model}' is not a Hugging Face repo id (owner/repo) or huggingface.co URL")
    check_quantization(quantization or None, param="model")
    return ModelReference(repo_id, quantization=quantization or None)


def _parse_url(text: str) -> ModelReference:
    url = text if "://" in text else f"https://{text}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL" for an unclosed '[', and the like
        raise InvalidModelReference(f"'{text}' is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not _is_hub_host(parts.netloc):
        raise InvalidModelReference(f"'{text}' is not a Hugging Face URL (expected https://huggingface.co/owner/repo)")
    segments = [unquote(segment) for segment in parts.path.split("/") if segment]
    repo_id = "/".join(segments[:2])
    rest = segments[2:]
    if len(segments) >= 2 and _REPO_ID.fullmatch(repo_id):
        if not rest:
            return ModelReference(repo_id)
        if rest[0] in ("blob", "resolve") and len(rest) >= 3:
            _check_file_path(rest[1], text)  # the revision too goes into the hub's URLs
            _check_file_path("/".join(rest[2:]), text)
            return ModelReference(repo_id, revision=rest[1], filename="/".join(rest[2:]))
        if rest[0] == "tree" and len(rest) == 2:
            _check_file_path(rest[1], text)
            return ModelReference(repo_id, revision=rest[1])
    raise InvalidModelReference(
        f"'{text}' is not the URL of a model repo or file "
        "(expected .../owner/repo or .../owner/repo/blob/main/file.gguf)"
    )


def _is_hub_host(netloc: str) -> bool:
    netloc = netloc.lower()
    return netloc in HUB_HOSTS or netloc == urlsplit(hub_endpoint()).netloc.lower()


# --- which file ----------------------------------------------------------------------------


def _basename(name: str) -> str:
    return PurePosixPath(name).name


def _is_weights(name: str) -> bool:
    lower = _basename(name).lower()
    return lower.endswith(".gguf") and not lower.startswith("mmproj")


def _is_later_split_part(name: str) -> bool:
    return is_later_shard(_basename(name))


def _name_tokens(name: str) -> set[str]:
    """'Llama-3.2-1B-Instruct-Q4_K_M.gguf' -> {'llama', '3', '2', '1b', 'instruct', 'q4_k_m'}."""
    stem = _basename(name).lower().removesuffix(".gguf")
    return set(re.split(r"[.\-]", stem))


def _matching(names: list[str], quantization: str) -> list[str]:
    # A whole name part first, so 'Q4_K' does not also take Q4_K_M and Q4_K_S; then any substring.
    wanted = quantization.strip().lower()
    exact = [name for name in names if wanted in _name_tokens(name)]
    return exact or [name for name in names if wanted in _basename(name).lower()]


def _listing(names: list[str]) -> str:
    return ", ".join(_basename(name) for name in names)


def choose_gguf(names: list[str], quantization: str | None, repo_id: str) -> str:
    """The one GGUF model to fetch among a repo's file names (paths inside the repo): its file,
    or the first shard of a split model (``model_files`` then lists every shard)."""
    # A split model counts once, by its first part.
    candidates = sorted(name for name in names if _is_weights(name) and not _is_later_split_part(name))
    if not candidates:
        raise FileNotFound(f"Hugging Face repo '{repo_id}' has no GGUF model files (studiolo runs GGUF models only)")
    if quantization:
        return _choose_by_quantization(candidates, quantization, repo_id)
    if len(candidates) == 1:
        return candidates[0]
    return _choose_default(candidates, repo_id)


def _choose_by_quantization(candidates: list[str], quantization: str, repo_id: str) -> str:
    matches = _matching(candidates, quantization)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise QuantizationNotFound(
            f"no GGUF file in '{repo_id}' matches quantization '{quantization}'; files: {_listing(candidates)}"
        )
    raise AmbiguousChoice(
        f"quantization '{quantization}' matches several files in '{repo_id}' ({_listing(matches)}); name one exactly"
    )


def _choose_default(candidates: list[str], repo_id: str) -> str:
    preferred = _matching(candidates, DEFAULT_QUANTIZATION)
    if len(preferred) == 1:
        return preferred[0]
    raise AmbiguousChoice(
        f"'{repo_id}' has {len(candidates)} GGUF files and no single {DEFAULT_QUANTIZATION} one;"
        f" choose one with a quantization: {_listing(candidates)}"
    )


# --- a split model's shards ----------------------------------------------------------------


def first_shard(name: str) -> str:
    """A split GGUF's first shard for any of its shards (``x-00002-of-00003.gguf`` ->
    ``x-00001-of-00003.gguf``): a URL to one shard means the whole model. Other names as they are."""
    numbers = shard_number(_basename(name))
    if numbers is None or numbers[0] == 1:
        return name
    return _shard_name(name, 1)


def _shard_name(name: str, number: int) -> str:
    """The path of shard ``number`` of the split ``name`` belongs to: same folder, prefix and count,
    named as llama.cpp looks for them (``-%05d-of-%05d.gguf``), as the catalog does."""
    base = _basename(name)
    folder = name[: len(name) - len(base)]
    count = base[-len("00003.gguf"):-len(".gguf")]
    return f"{folder}{split_prefix(base)}-{number:05d}-of-{count}.gguf"


def model_files(chosen: str, names: list[str], repo_id: str) -> list[str]:
    """Every file of the model ``chosen`` names, first shard first: the file itself, or every shard
    of its split, each of which the repo must list."""
    numbers = shard_number(_basename(chosen))
    if numbers is None or numbers[1] <= 1:
        return [chosen]
    shards = [_shard_name(chosen, number) for number in range(1, numbers[1] + 1)]
    listed = set(names)
    missing = [shard for shard in shards if shard not in listed]
    if missing:
        raise FileNotFound(
            f"'{_basename(shards[0])}' is the first of {numbers[1]} shards of a split GGUF, but Hugging Face repo"
            f" '{repo_id}' lacks {_listing(missing)}"
        )
    return shards


# --- a vision model's projector ------------------------------------------------------------

# When a repo has several projectors and none matches the model's quantization, in this order.
PROJECTOR_PREFERENCE = ("f16", "bf16", "f32")


def _quantization_tag(name: str) -> str:
    """The last part of a file's stem, where repos put the quantization: 'x-Q4_K_M.gguf' -> 'q4_k_m'."""
    return re.split(r"[.\-]", _basename(name).lower().removesuffix(".gguf"))[-1]


def choose_projector(names: list[str], chosen: str) -> str | None:
    """The vision projector (``mmproj*.gguf``) to fetch with the model ``chosen``, None if the repo has none.

    Several: the one whose quantization tag is the model's, else F16, BF16, F32, else the first by name."""
    projectors = sorted(
        name for name in names if _basename(name).lower().startswith("mmproj") and name.lower().endswith(".gguf")
    )
    if not projectors:
        return None
    by_tag = {_quantization_tag(name): name for name in reversed(projectors)}  # the first by name wins a tie
    for tag in (_quantization_tag(chosen), *PROJECTOR_PREFERENCE):
        if tag in by_tag:
            return by_tag[tag]
    return projectors[0]
