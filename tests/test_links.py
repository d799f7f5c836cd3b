"""The repo ships what it cites: every relative link in a tracked Markdown file points to a file or folder that
exists, and no tracked file points outside the repository (../shared/, the project's private notes)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACKED = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT).stdout.split()
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _broken_links() -> list[str]:
    broken = []
    for name in TRACKED:
        if not name.endswith(".md") or not (ROOT / name).exists():
            continue
        for target in LINK.findall((ROOT / name).read_text()):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            path = (ROOT / name).parent / target.split("#")[0]
            if not path.exists():
                broken.append(f"{name}: {target}")
    return broken


def test_every_relative_link_in_the_docs_exists():
    assert not _broken_links()


def test_nothing_points_outside_the_repository():
    outside = [name for name in TRACKED if (ROOT / name).is_file() and name.endswith((".md", ".py", ".yaml", ".sh"))
               and "../shared/" in (ROOT / name).read_text(errors="ignore") and name != "tests/test_links.py"]
    assert not outside, outside
