"""A page opened in a real headless browser (Debian's ``chromium``), as a person would open it.

``open_page`` loads a file with scripts on and returns the DOM as the page left it after its
scripts ran (``--dump-dom``), and can keep a screenshot of it. The browser gets a profile of
its own under the test's directory and nothing to reach: no component updates, sync or other
background traffic, and the page is a ``file://`` URL. ``--no-sandbox``: the tests run as root,
where Chromium's sandbox will not start.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from typing_extensions import override

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
)


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is not installed: `make system-deps` installs it"
    return found


def _browse(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), *_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def open_page(page: Path, work: Path, *, screenshot: Path | None = None) -> str:
    """The DOM of ``page`` after its scripts ran; with ``screenshot``, a PNG of it there too."""
    dom = _browse(page, work / "profile", "--dump-dom").stdout
    if screenshot is not None:
        _browse(page, work / "profile", f"--screenshot={screenshot}", "--window-size=1280,1000")
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return dom


# Appended to a copy of the page: how far it is wider than the window, once laid out.
_MEASURE = (
    "<script>document.body.setAttribute('data-overflow', String("
    "document.documentElement.scrollWidth - document.documentElement.clientWidth))</script>"
)


def overflow(page: Path, work: Path, width: int) -> int:
    """How many px ``page`` is wider than a ``width`` px window (0: no sideways scrolling),
    measured by the browser's layout on a copy of the page in ``work``."""
    copy = work / f"measured-{width}-{page.name}"
    copy.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    dom = _browse(copy, work / "profile", "--dump-dom", f"--window-size={width},900").stdout
    found = re.search(r'data-overflow="(-?[0-9]+)"', dom)
    assert found, "the measuring script did not run"
    return int(found[1])


class Elements(HTMLParser):
    """Every element of a page as (tag, attributes)."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.feed(dom)

    @override
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))

    def having(self, tag: str, css_class: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.found
            if t == tag and (css_class is None or css_class in a.get("class", "").split())
        ]


def inner(dom: str, tag: str, ident: str | None = None) -> str:
    """The markup inside the first ``tag`` (with ``id`` ``ident``) of ``dom``."""
    attrs = "" if ident is None else f' id="{ident}"'
    found = re.search(rf"<{tag}{attrs}[^>]*>(.*?)</{tag}>", dom, re.DOTALL)
    assert found, f"no <{tag}{attrs}> in the page"
    return found[1]
