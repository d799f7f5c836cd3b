"""The configuration reference, made from the schema's own source: every key with its type, its default and the
comment beside it (or the block of comments above it) in rlt_ray/config/schema.py. ``python -m rlt_ray.config``
prints it (``python -m rlt_ray.config run`` one section); docs/config.md is the same text, written by
``python -m rlt_ray.config --write`` and checked by tests/test_config_reference.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent / "schema.py"
DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def keys() -> dict[str, list[tuple[str, str, str, str]]]:
    """section -> [(key, type, default, help)] in schema order; help is the field's comment, joined to one line."""
    source = SCHEMA.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    # module-level type aliases (Dtype = Literal[...]) are shown expanded: the reader sees the allowed values
    aliases = {a.targets[0].id: ast.unparse(a.value) for a in tree.body
               if isinstance(a, ast.Assign) and isinstance(a.value, ast.Subscript)}

    def type_text(annotation: ast.expr) -> str:
        return re.sub(r"\b\w+\b", lambda m: aliases.get(m.group(0), m.group(0)), ast.unparse(annotation))

    sections = {}
    for field in classes["RLTConfig"].body:
        if isinstance(field, ast.AnnAssign):
            sections[field.target.id] = ast.unparse(field.value).split("default_factory=")[1].rstrip(")")
    out: dict[str, list[tuple[str, str, str, str]]] = {}
    for section, cls in sections.items():
        rows = []
        block: list[str] = []  # a block comment above a field is its help, and the help of the fields under it
        block_key = ""
        for node in classes[cls].body:
            if not isinstance(node, ast.AnnAssign):
                continue
            above = []
            i = node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                above.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            key = f"{section}.{node.target.id}"
            if above:
                block, block_key = above, key
            elif i >= 0 and not lines[i].strip():
                block = []  # a blank line ends a block comment's reach
            tail = lines[node.end_lineno - 1].split("#", 1)[1].strip() if "#" in lines[node.end_lineno - 1] else ""
            if tail:
                help_text = tail
            elif block:  # the block above a run of fields: in full at its first, pointed to from the others
                help_text = " ".join(block) if block_key == key else f"see `{block_key}`"
            else:
                help_text = ""
            default = ast.unparse(node.value) if node.value is not None else ""
            default = default.replace("field(default_factory=lambda: ", "").rstrip(")") if "lambda" in default \
                else default
            rows.append((key, type_text(node.annotation), default, help_text))
        out[section] = rows
    return out


def render(section: str | None = None) -> str:
    sections = keys()
    if section is not None and section not in sections:
        raise SystemExit(f"no config section {section!r}; the sections: {', '.join(sections)}")
    parts = ["# Configuration reference\n",
             "Every key of the config, made from `rlt_ray/config/schema.py` (`python -m rlt_ray.config [SECTION]` "
             "prints the same). Set a key in a preset's YAML or on the command line as `section.key=value`; "
             "`--config PRESET` picks the preset (configs/).\n"]
    for name, rows in sections.items():
        if section is not None and name != section:
            continue
        parts.append(f"\n## {name}\n\n| key | type | default | what it does |\n|---|---|---|---|")
        for key, typ, default, help_text in rows:
            cell = help_text.replace("|", "\\|")
            parts.append(f"| `{key}` | `{typ}` | `{default.replace('|', '/')}` | {cell} |")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    if "--write" in argv:
        DOC.write_text(render())
        print(f"wrote {DOC}")
        return 0
    args = [a for a in argv if not a.startswith("-")]
    print(render(args[0] if args else None))
    return 0
