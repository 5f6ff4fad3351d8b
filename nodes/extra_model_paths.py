"""Loading `extra_model_paths.yaml` files onto folder_paths (COMPAT §8).

Top-level sections have any name. In each: `base_path` (~ and $VARS expanded, relative to the YAML's
directory), `is_default: true` (put the paths first instead of last), and `<folder_key>: <paths>`
where the value may be a multi-line block, one path per line. Lines are not stripped of trailing
spaces, as in ComfyUI (only blank lines are skipped)."""
from __future__ import annotations

import logging
import os

import yaml

log = logging.getLogger("latentgraph.folders")
LEGACY_KEYS = {"unet": "diffusion_models", "clip": "text_encoders"}


class ExtraPathsError(ValueError):
    """The YAML file is unreadable or not shaped as sections of key: path(s)."""


def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


def parse_extra_model_paths(yaml_path: str) -> list[tuple[str, str, bool]]:
    """Read one YAML file -> [(folder_key, absolute path, is_default)] in file order."""
    try:
        with open(yaml_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ExtraPathsError(f"{yaml_path}: cannot read extra model paths: {e}") from None
    if config is None:
        return []
    if not isinstance(config, dict):
        raise ExtraPathsError(f"{yaml_path}: top level must be a mapping of sections")
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
    result = []
    for section, entries in config.items():
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ExtraPathsError(f"{yaml_path}: section {section!r} must be a mapping")
        base = entries.get("base_path")
        if base is not None:
            base = _expand(str(base))
            if not os.path.isabs(base):
                base = os.path.abspath(os.path.join(yaml_dir, base))
        is_default = entries.get("is_default") is True
        for key, value in entries.items():
            if key in ("base_path", "is_default"):
                continue
            if not isinstance(value, (str, int, float)):
                raise ExtraPathsError(f"{yaml_path}: {section}.{key} must be a path or a block of paths")
            key = LEGACY_KEYS.get(key, key)
            for line in str(value).split("\n"):
                if not line.strip():
                    continue
                path = os.path.join(base, line) if base else os.path.join(yaml_dir, line)
                result.append((key, os.path.normpath(path), is_default))
    return result


def load_extra_model_paths(yaml_path: str, folder_paths) -> list[tuple[str, str, bool]]:
    """Parse `yaml_path` and register each path with folder_paths.add_model_folder_path."""
    entries = parse_extra_model_paths(yaml_path)
    for key, path, is_default in entries:
        log.info("adding extra search path %s %s", key, path)
        folder_paths.add_model_folder_path(key, path, is_default=is_default)
    return entries
