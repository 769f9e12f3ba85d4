"""Reading and writing the typed configuration (`ipt_dist.config`'s schema): YAML and override
strings -> checked dataclasses (every problem listed at once, the closest valid key as a hint), and
back to dicts; also the flat view and the human diff of two configurations.

Import these from `ipt_dist.config`, which re-exports them.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ipt_dist.config import ConfigError, IPTConfig


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, errors: list[str]) -> Any:
    """Check/convert `value` against type annotation `tp`; append problems to `errors`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], where, errors)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping (section), got {type(value).__name__}")
            return tp()
        return _from_dict(tp, value, where, errors)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            errors.append(f"{where}: expected a list, got {value!r}")
            return []
        (inner,) = args or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {value!r}")
            return {}
        kt, vt = args or (Any, Any)
        return {
            _coerce(k, kt, f"{where} key {k!r}", errors): _coerce(v, vt, f"{where}[{k!r}]", errors)
            for k, v in value.items()
        }
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        errors.append(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        errors.append(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        errors.append(f"{where}: expected a number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        errors.append(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: dict, prefix: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            errors.append(f"{where}: unknown key{hint}")
            continue
        n_errors = len(errors)
        coerced = _coerce(value, hints[key], where, errors)
        # A mistyped leaf keeps its default so the value checks of its section still run.
        if len(errors) == n_errors or dataclasses.is_dataclass(hints[key]):
            kwargs[key] = coerced
    try:
        return cls(**kwargs)
    except TypeError as exc:  # only reachable through bad types already reported
        errors.append(f"{prefix or cls.__name__}: {exc}")
        return cls()


def config_from_dict(data: dict | None, source: str = "config") -> IPTConfig:
    """Build and validate an IPTConfig. Raises ConfigError naming every bad field."""
    errors: list[str] = []
    cfg = _from_dict(IPTConfig, data or {}, "", errors)
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if hasattr(section, "problems"):
            try:
                errors.extend(section.problems())
            except TypeError:  # a field of the wrong type, already reported above
                pass
    if errors:
        raise ConfigError(f"{source}: invalid config:\n  - " + "\n  - ".join(errors))
    return cfg


def config_to_dict(cfg: IPTConfig) -> dict:
    return asdict(cfg)


def _parse_override(item: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. pt.lr=0.3")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def _load_yaml_strict(text: str, source: str) -> Any:
    """yaml.safe_load that refuses a repeated key: PyYAML keeps the last one silently, so a second
    `pt:` block would reset every field of the first to its default."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    repeats: list[str] = []

    def construct_mapping(loader, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                repeats.append(f"{key!r} on line {line} repeats line {seen[key]}")
            else:
                seen[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    data = yaml.load(text, Loader=StrictLoader)  # safe: StrictLoader is a SafeLoader subclass
    if repeats:
        raise ConfigError(f"{source}: repeated keys (YAML would keep only the last): {'; '.join(repeats)}. "
                          "Fix: merge them into one")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> IPTConfig:
    """Load a YAML config (or defaults when `path` is None) and apply KEY=VALUE overrides.

    Raises:
        FileNotFoundError: the config file does not exist.
        ConfigError: unknown keys, wrong types or invalid values (all listed at once).
    """
    import yaml

    data: dict = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist; pass the path of a YAML file (see configs/)")
        source = str(p)
        try:
            data = _load_yaml_strict(p.read_text(encoding="utf-8-sig"), str(p)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    for item in overrides or []:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    return config_from_dict(data, source)


def save_config(cfg: IPTConfig, path: str | os.PathLike) -> None:
    import yaml

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def describe_changes(before: dict[str, Any], now: dict[str, Any], limit: int = 8) -> str:
    """"key: old -> new; ..." for keys whose values differ (at most `limit`), "" when none. A missing
    key reads as None on purpose: a record older than a field equals one holding its None."""
    diff = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k)]
    return "; ".join(diff[:limit]) + (" ..." if len(diff) > limit else "")


def flatten_config(cfg: IPTConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{"pt.lr": 1e-4, ...}: the view logged as MLflow params."""
    data = config_to_dict(cfg) if isinstance(cfg, IPTConfig) else cfg
    flat: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(kk, str) for kk in v):
            flat.update(flatten_config(v, key + "."))
        else:
            flat[key] = v
    return flat
