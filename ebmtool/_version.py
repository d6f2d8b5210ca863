"""The installed distribution's version (pyproject.toml), the one ``ebmtool --version`` prints and every artifact
records. Layer 0: it imports nothing of ebmtool, so any module may import it (docs/design.md §1)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ebmtool")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
