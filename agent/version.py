"""The agent's version, recorded in every manifest."""

__version__ = "0.1.0"


def build() -> str:
    """How this copy was built: "" for an installed package, the stamp of a single file.

    ``make dist`` puts ``casefile-build.txt`` beside the frozen program's modules
    (PyInstaller unpacks them to ``sys._MEIPASS``)."""
    import sys
    from pathlib import Path

    base = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or base is None:
        return ""
    try:
        return (Path(base) / "casefile-build.txt").read_text(encoding="utf-8").strip()
    except OSError:
        return "single file (build stamp missing)"
