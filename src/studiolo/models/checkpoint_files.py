"""The files of a Hugging Face checkpoint, in a folder or a zip of one, for the converters; and the error
a converter refuses a checkpoint with."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors_bytes
from safetensors.numpy import load_file as load_safetensors_file

from studiolo.domain.errors import InvalidRequest


class ConversionRefused(InvalidRequest):
    """A checkpoint that cannot be converted; the message says what is wrong with it."""


class Checkpoint:
    """The files of a checkpoint, in a folder or a zip, by their path relative to its root."""

    def __init__(self, source: Path):
        self.source = source
        self._zip: zipfile.ZipFile | None = None
        self._root = PurePosixPath()
        if source.is_dir():
            self._folder = source
        elif source.is_file() and zipfile.is_zipfile(source):
            self._zip = zipfile.ZipFile(source)
            self._root = self._zip_root()
        elif source.exists():
            raise ConversionRefused(f"{source}: not a checkpoint folder or a zip of one")
        else:
            raise ConversionRefused(f"no such file or folder: {source}")

    def _zip_root(self) -> PurePosixPath:
        assert self._zip is not None
        configs = [PurePosixPath(n) for n in self._zip.namelist() if PurePosixPath(n).name == "config.json"]
        # The checkpoint's own config.json is the shallowest one (1_Pooling/config.json sits below it).
        return min((c.parent for c in configs), key=lambda p: len(p.parts), default=PurePosixPath())

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def has(self, name: str) -> bool:
        if self._zip is None:
            return (self._folder / name).is_file()
        try:
            self._zip.getinfo(str(self._root / name))
        except KeyError:
            return False
        return True

    def read_bytes(self, name: str) -> bytes:
        if self._zip is None:
            return (self._folder / name).read_bytes()
        return self._zip.read(str(self._root / name))

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read_bytes(name))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConversionRefused(f"{self.source}: {name} is not valid JSON ({error})") from None

    def read_json_if_there(self, name: str) -> Any:
        return self.read_json(name) if self.has(name) else None

    def load_tensors(self, name: str) -> dict[str, np.ndarray]:
        try:
            if self._zip is None:
                return load_safetensors_file(self._folder / name)
            return load_safetensors_bytes(self.read_bytes(name))
        except Exception as error:  # safetensors raises its own error types for a damaged file
            raise ConversionRefused(f"{self.source}: cannot read {name}: {error}") from None
