"""YAML in and out of pydantic models, with `--set key=value` overrides and one-line errors."""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from carsweep.errors import UserError, describe_validation_error
from carsweep.storage import BucketPath, is_bucket, location

Model = TypeVar("Model", bound=BaseModel)


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as people write them, and strict about keys.

    PyYAML implements YAML 1.1, where a float needs a dot: `1e-4` (how every tutorial writes a
    learning rate) would be the string '1e-4', and `lr: {loguniform: [1e-4, 1e-2]}` a range
    of strings. YAML 1.2's float form (a mantissa without a dot) is added here. A key given
    twice in one mapping is an error, where PyYAML keeps the last silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml_text(text: str) -> Any:
    """`text` parsed by ConfigLoader (a yaml.YAMLError for malformed YAML)."""
    return yaml.load(text, Loader=ConfigLoader)  # safe: ConfigLoader is a SafeLoader


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file; a missing, undecodable or malformed file is a
    UserError naming the file (and the line, where YAML knows it)."""
    path = location(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at "
                        f"offset {error.start}); save it as UTF-8") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None)
        raise UserError(f"{path}: not valid YAML{where}" + (f": {problem}" if problem else "")
                        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    if _refers_to_itself(data):
        raise UserError(f"{path}: a YAML anchor (&name) is used inside itself (*name), which "
                        "makes an endless value")
    return data


def _refers_to_itself(value: Any, inside: tuple[int, ...] = ()) -> bool:
    """Whether a mapping or list contains itself (a YAML anchor used within its own value)."""
    if not isinstance(value, dict | list):
        return False
    if id(value) in inside:
        return True
    children = value.values() if isinstance(value, dict) else value
    return any(_refers_to_itself(child, (*inside, id(value))) for child in children)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (["a", "b"], 3); the value is read as YAML so `0.1`, `true`, `[1,2]` work."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected KEY=VALUE, for example lr=0.01")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `data` with each `key.path=value` set (nested keys are created as needed)."""
    merged = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = merged
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = value
    return merged


def validate(model: type[Model], data: dict[str, Any], source: str) -> Model:
    """`model(**data)`, with pydantic's error turned into one line naming `source` and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise UserError(describe_validation_error(error, source)) from None


def load_model(model: type[Model], path: Path | None, overrides: list[str] = ()) -> Model:
    """Defaults, then the YAML file (if any), then overrides: the three config layers."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    return validate(model, apply_overrides(data, list(overrides)), source)


def changed_settings(saved: dict[str, Any], given: dict[str, Any], may_change: frozenset[str]
                     ) -> list[str]:
    """Each setting (as `asha.grace_period`) whose value differs between two configs (as their
    YAML holds them), as "key (old -> new)", leaving out those under a top-level key in
    `may_change`: what a resume refuses, since it continues a run or a sweep as started."""
    old, new = _flat(saved), _flat(given)
    return [f"{key} ({old.get(key)!r} -> {new.get(key)!r})"
            for key in dict.fromkeys([*new, *old])
            if key.split(".")[0] not in may_change and new.get(key) != old.get(key)]


def _flat(data: dict, prefix: str = "") -> dict:
    """{"asha": {"grace_period": 1}} -> {"asha.grace_period": 1}; lists stay values."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def save_model(config: BaseModel, path: Path) -> None:
    """Write the resolved config as YAML, atomically, so a reader never sees half a file."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    write_text_atomic(path, text)


def write_text_atomic(path: Path | BucketPath, text: str) -> None:
    """Write to a temporary file in the same folder, then rename over `path`; in a bucket,
    one PUT, which replaces an object whole or not at all."""
    if is_bucket(path):
        path.write_text(text)
        return
    with atomic_write(Path(path), "w") as out:
        out.write(text)


@contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO]:
    """A file object for a temporary file beside `path` that is renamed over `path` when the
    block ends without error (removed otherwise): readers see the old file or the new one,
    never half of one. A full disk is a UserError naming `path`."""
    with disk_full_is_user_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = open_temporary_beside(path)
        try:
            with os.fdopen(handle, mode) as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def open_temporary_beside(path: Path) -> tuple[int, Path]:
    """A new, exclusively created hidden file next to `path`: its descriptor and its path.

    Its mode is 0666 less the umask, as for any new file (tempfile.mkstemp's 0600 would make
    trials tables, checkpoints and exports unreadable to the rest of a team on shared storage).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


@contextmanager
def disk_full_is_user_error(path: Path) -> Iterator[None]:
    """A full disk or quota while writing `path` becomes one line naming it, not a traceback."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(
            f"{path}: no space left on the device while writing it ({error.strerror}); "
            "free some space or write somewhere else; the previous file, if any, is unchanged"
        ) from None


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
