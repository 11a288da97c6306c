"""The models on disk: ``STUDIOLO_HOME/models/<publisher>/<repo>/<file>.gguf``.

A model's key is ``publisher/repo`` in lower case, as LM Studio names models. A request
may also name a model by its repo alone, or by its file name, when that is unambiguous.

LoRA adapters sit in an ``adapters`` folder beside their base model's file:
``models/<publisher>/<repo>/adapters/<name>.gguf``. An adapter's key is
``publisher/repo/name``; a request may name it by ``name`` alone (as vLLM and BladeLLM
select a LoRA by its name in ``model``), and gets the base model with the adapter applied.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from studiolo.domain.errors import InvalidRequest, NotFound
from studiolo.models.split_gguf import is_later_shard, missing_shards, other_shards

log = logging.getLogger(__name__)


class ModelNotFound(NotFound):
    code, param = "model_not_found", "model"

    def __init__(self, name: str, available: list[str]):
        # the catalog is not listed: the message reaches any caller (and its logs); /v1/models answers
        # to those allowed to see it
        hint = "GET /v1/models lists the models it has" if available else "it has no models (`studiolo get` adds some)"
        super().__init__(f"model '{name}' not found on this server; {hint}")
        self.name = name


class AmbiguousModelName(InvalidRequest, LookupError):
    code, param = "ambiguous_model", "model"

    def __init__(self, name: str, matches: list[str]):
        super().__init__(f"model name '{name}' matches several models ({', '.join(matches)}); use the full key")
        self.name = name


ADAPTERS_FOLDER = "adapters"


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    publisher: str
    repo: str
    path: Path
    base: CatalogEntry | None = None  # for a LoRA adapter: the model it adapts

    @property
    def is_adapter(self) -> bool:
        return self.base is not None

    @property
    def size_bytes(self) -> int:
        """The file's size; for a split GGUF, every shard's."""
        return sum(path.stat().st_size for path in [self.path, *other_shards(self.path)])

    def names(self) -> set[str]:
        """Every name that may refer to this model, lower case."""
        stem = self.path.name.lower()
        names = {self.key, stem, stem.removesuffix(".gguf")}
        return names if self.is_adapter else names | {self.repo}


def _is_weights_file(path: Path) -> bool:
    # Vision projectors sit beside their model, and a split GGUF's later shards beside its first:
    # they are not models of their own.
    name = path.name.lower()
    return name.endswith(".gguf") and not name.startswith("mmproj") and not is_later_shard(name)


def _is_whole(path: Path) -> bool:
    """A split GGUF is a model only with all its shards (an import or download places them first)."""
    missing = missing_shards(path)
    if missing and path not in _warned_incomplete:
        _warned_incomplete.add(path)
        log.warning("skipping %s: its shard %s is missing", path, missing[0].name)
    return not missing


_warned_incomplete: set[Path] = set()


_warned_names: set[bytes] = set()  # the catalog is scanned per request: say it once per name


def _has_utf8_name(path: Path) -> bool:
    """Keys and paths go into JSON and messages as UTF-8; a name that is not (odd bytes from
    another system) is skipped rather than failing every model list and lookup."""
    try:
        path.name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        if raw not in _warned_names:
            _warned_names.add(raw)
            log.warning("skipping %r under the models folder: its name is not valid UTF-8; rename it", raw)
        return False


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _has_utf8_name(p))


def _weights_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and _is_weights_file(p) and _has_utf8_name(p) and _is_whole(p))


class Catalog:
    def __init__(self, root: Path):
        self.root = root

    def entries(self) -> list[CatalogEntry]:
        """Scan the folder; cheap enough (two directory levels) to do per request."""
        found: list[CatalogEntry] = []
        if not self.root.is_dir():
            return found
        for publisher_dir in _subfolders(self.root):
            for repo_dir in _subfolders(publisher_dir):
                files = _weights_files(repo_dir)
                if files:
                    publisher, repo = publisher_dir.name.lower(), repo_dir.name.lower()
                    found.append(CatalogEntry(f"{publisher}/{repo}", publisher, repo, files[0]))
        return found

    def adapters(self) -> list[CatalogEntry]:
        """The LoRA adapters of every model on disk."""
        found: list[CatalogEntry] = []
        for model in self.entries():
            folder = model.path.parent / ADAPTERS_FOLDER
            if folder.is_dir():
                for path in _weights_files(folder):
                    name = path.name.lower().removesuffix(".gguf")
                    found.append(CatalogEntry(f"{model.key}/{name}", model.publisher, model.repo, path, model))
        return found

    def resolve(self, name: str) -> CatalogEntry:
        """The model or adapter ``name`` refers to."""
        wanted = name.strip().lower()
        entries = self.entries() + self.adapters()
        for entry in entries:
            if entry.key == wanted:
                return entry
        matches = [entry for entry in entries if wanted in entry.names()]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise AmbiguousModelName(name, [entry.key for entry in matches])
        raise ModelNotFound(name, [entry.key for entry in entries])
