"""``kdistill set key=value ...``: params.yaml changed in place, its comments kept, the result validated first.

What ``dvc exp run -S`` does to params.yaml, without running anything and without losing the
file's comments (treeverse/dvc#8720): values are YAML (``seeds=[42,43]``, ``distill_kd.T=4``), and
a change that would make the file invalid is refused, naming the key, before it is written.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

from kdistill.control.params import parse_params
from kdistill.control.registry import Params
from kdistill.errors import ConfigError
from kdistill.files import write_text


def parse_assignment(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{text!r}: expected key=value, e.g. distill_kd.T=4")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ConfigError(f"{text!r}: the value is not YAML: {error}") from None


def _yaml_value(value: Any) -> Any:
    if isinstance(value, list):  # one line, as params.yaml writes its lists
        seq = CommentedSeq(value)
        seq.fa.set_flow_style()
        return seq
    return value


def set_params(path: Path, assignments: list[str]) -> list[str]:
    """Apply ``key=value`` assignments to the params file; return the keys whose value changed."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    editor = YAML()
    editor.preserve_quotes = True
    editor.width = 4096  # never re-wrap a comment
    document = editor.load(path.read_text())
    changed = []
    for key, value in map(parse_assignment, assignments):
        *sections, leaf = key.split(".")
        node = document
        for depth, section in enumerate(sections):
            if not isinstance(node.get(section), Mapping):
                raise ConfigError(f"{key}: {'.'.join(sections[:depth + 1])!r} is not a section of {path}")
            node = node[section]
        if node.get(leaf) != value:
            node[leaf] = _yaml_value(value)
            changed.append(key)
    buffer = io.StringIO()
    editor.dump(document, buffer)
    parse_params(yaml.safe_load(buffer.getvalue()), Params, str(path))
    write_text(path, buffer.getvalue())
    return changed
