"""`carsweep settings [--json]`: every setting a YAML or `--set` can hold, and every name it takes.

Nothing here is a second copy: the trial settings are TrialConfig's fields (type, default,
constraints and one-line description from the pydantic model, grouped by
config.trial.FIELD_GROUPS), the optimizers, lr schedules and augmentation presets are the
registries' entries with their docs, and the sweep settings are SweepConfig's fields, a nested
model's fields listed as `asha.grace_period`. `catalog()` gathers it as plain data; the text
view (80 columns, descriptions wrapped) and `--json` both print that one catalog.
"""

from __future__ import annotations

import argparse
import inspect
import json
import textwrap
import types
import typing
from typing import Any

HELP = "list every trial and sweep setting (type, default, meaning) and every augmentation preset"
WIDTH = 80
INDENT = "  "
# annotated-types constraint -> how it reads after the type, e.g. "float > 0, <= 10".
CONSTRAINTS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >="}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the catalog as JSON (for scripts and editors)")


def run(args: argparse.Namespace) -> int:
    listing = catalog()
    print(json.dumps(listing, indent=2) if args.json else format_catalog(listing))
    return 0


def catalog() -> dict[str, list[dict[str, Any]]]:
    """Every setting and registry entry as JSON-ready dicts, in the order they are listed."""
    from carsweep.config.space import SAMPLERS
    from carsweep.config.sweep import REPORTED_METRICS, SweepConfig
    from carsweep.config.trial import FIELD_GROUPS, TrialConfig
    from carsweep.trainable import AUGMENTATIONS, OPTIMIZERS, SCHEDULES

    grouped = [(group, name) for group, names in FIELD_GROUPS.items() for name in names]
    placed = {name for _, name in grouped}
    grouped += [("other", name) for name in TrialConfig.model_fields if name not in placed]
    trial = [{"group": group, **_field_entry(name, TrialConfig.model_fields[name])}
             for group, name in grouped if name in TrialConfig.model_fields]
    sweep = _model_entries(SweepConfig)
    for entry in sweep:  # values a validator or another model owns, not the field's type
        if entry["name"] == "metric":
            entry["choices"] = list(REPORTED_METRICS)
        if entry["name"] == "space":
            entry["description"] += (f": each a fixed value or one of {', '.join(SAMPLERS)} "
                                     "(see configs/demo.yaml)")
    return {
        "trial": trial,
        "optimizers": _documented_entries(OPTIMIZERS),
        "lr_schedules": _documented_entries(SCHEDULES),
        "augmentations": [{"name": name, "doc": preset.doc,
                           "model_dependent": preset.model_dependent, "mixing": preset.mixing}
                          for name, preset in AUGMENTATIONS.items()],
        "sweep": sweep,
    }


def _documented_entries(registry: dict[str, Any]) -> list[dict[str, str]]:
    """A registry of functions, each described by its docstring (optim.py)."""
    return [{"name": name, "doc": inspect.getdoc(entry) or ""}
            for name, entry in registry.items()]


def _model_entries(model, prefix: str = "") -> list[dict[str, Any]]:
    """A pydantic model's fields; a field that is itself a model is listed field by field."""
    from pydantic import BaseModel

    entries = []
    for name, field in model.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            entries.extend(_model_entries(nested, f"{prefix}{name}."))
        else:
            entries.append(_field_entry(f"{prefix}{name}", field))
    return entries


def _field_entry(name: str, field) -> dict[str, Any]:
    """name, type, choices, constraints, default and description of one pydantic field."""
    kind, choices = _type_of(field.annotation)
    entry = {"name": name, "type": kind}
    if choices:
        entry["choices"] = choices
    constraints = {key: getattr(rule, key) for rule in field.metadata for key in CONSTRAINTS
                   if hasattr(rule, key)}
    if constraints:
        entry["constraints"] = constraints
    entry["default"] = field.get_default(call_default_factory=True)
    entry["description"] = field.description or ""
    return entry


def _type_of(annotation: Any) -> tuple[str, list[Any]]:
    """("float", []) / ("choice", ["sgd", "adam"]) / ("int or null", []) for an annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "choice", list(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [_type_of(arg)[0] for arg in typing.get_args(annotation)]
        return " or ".join("null" if part == "NoneType" else part for part in parts), []
    if origin is not None:
        return {dict: "mapping", list: "list"}.get(origin, origin.__name__), []
    return annotation.__name__, []


def format_catalog(listing: dict[str, list[dict[str, Any]]], width: int = WIDTH) -> str:
    """The catalog for a terminal `width` columns wide: sections, then one entry per setting."""
    trial_groups: dict[str, list[dict]] = {}
    for entry in listing["trial"]:
        trial_groups.setdefault(entry["group"], []).append(entry)
    return "\n\n".join([
        _wrap("TRIAL SETTINGS: a trial YAML, `carsweep train --set KEY=VALUE`, or a sweep's "
              "`space:` (fixed or searched)", width),
        *(_block(f"trial: {group}", _setting_rows(entries), width)
          for group, entries in trial_groups.items()),
        _block("optimizers (optimizer: NAME)", _name_rows(listing["optimizers"]), width),
        _block("lr schedules (lr_schedule: NAME)", _name_rows(listing["lr_schedules"]), width),
        _block("augmentation presets (augmentation: NAME, or several joined with '+', e.g. "
               "flip+color-jitter)", _name_rows(listing["augmentations"]), width),
        _wrap("SWEEP SETTINGS: the top level of a sweep YAML, or "
              "`carsweep sweep --set KEY=VALUE`", width),
        _block("sweep", _setting_rows(listing["sweep"]), width),
    ])


def _setting_rows(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(entry["name"], f"{_type_text(entry)}, default {_value_text(entry['default'])}",
             entry["description"]) for entry in entries]


def _name_rows(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(entry["name"], entry["doc"], "") for entry in entries]


def _block(title: str, rows: list[tuple[str, str, str]], width: int) -> str:
    """The title, then per row: the name, its text beside it, its note (if any) below the text
    and 2 further in; both wrapped to `width`."""
    column = len(INDENT) + max(len(name) for name, _, _ in rows) + 2
    lines = [_wrap(title, width)]
    for name, text, note in rows:
        head = f"{INDENT}{name}".ljust(column)
        lines.append(_wrap(text, width, " " * column, first=head))
        if note:
            lines.append(_wrap(note, width, " " * (column + 2)))
    return "\n".join(lines)


def _type_text(entry: dict[str, Any]) -> str:
    if "choices" in entry:
        text = " | ".join(_value_text(choice) for choice in entry["choices"])
        return text if entry["type"] == "choice" else f"{entry['type']}: {text}"
    limits = ["non-empty" if (key, value) == ("min_length", 1)
              else f"{CONSTRAINTS[key]} {_value_text(value)}"
              for key, value in entry.get("constraints", {}).items()]
    return ", ".join([entry["type"], *limits]) if limits else entry["type"]


def _value_text(value: Any) -> str:
    """A value as it is written in YAML: true, null, 0.0001, [], flip."""
    return value if isinstance(value, str) else json.dumps(value)


def _wrap(text: str, width: int, indent: str = "", first: str | None = None) -> str:
    return textwrap.fill(text, width, initial_indent=indent if first is None else first,
                         subsequent_indent=indent, break_on_hyphens=False)
