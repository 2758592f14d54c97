"""Spark configuration presets and the GPU discovery script, shipped inside the package.

The presets are spark-defaults files in ``netsift/platform/presets/`` (package data, so
an installed netsift needs no checkout): ``gpu`` gives each executor one NVIDIA GPU on
Kubernetes, ``cpu`` the same executor shape without one. ``deploy/spark/`` in the
repository holds identical copies for ``spark-submit --properties-file``.

>>> spark_conf("gpu")["spark.executor.resource.gpu.vendor"]
'nvidia.com'
>>> discovery_script_path().name
'getGpusResources.sh'
"""

from __future__ import annotations

from pathlib import Path

from netsift.errors import UsageError

PRESETS = ("cpu", "gpu")
_PRESET_DIR = Path(__file__).resolve().parent / "presets"
_SEPARATORS = "=: \t\f"


def preset_path(preset: str) -> Path:
    """The packaged spark-defaults file of ``preset`` (one of :data:`PRESETS`)."""
    if preset not in PRESETS:
        raise UsageError(f"unknown Spark preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return _PRESET_DIR / f"{preset}.conf"


def spark_conf(preset: str) -> dict[str, str]:
    """The Spark properties of ``preset`` ("gpu" or "cpu"), as Spark would read the file.

    Values are strings, as in ``SparkConf``; commented-out settings (the optional RAPIDS
    block of the gpu preset) are not included.
    """
    path = preset_path(preset)
    return parse_spark_properties(path.read_text(encoding="utf-8"), source=str(path))


def parse_spark_properties(text: str, source: str = "<string>") -> dict[str, str]:
    """Parse spark-defaults text into ``{key: value}``, the way spark-submit reads it.

    spark-submit loads the file with ``java.util.Properties`` and trims each value: a
    line is ``key=value``, ``key: value`` or ``key value``; lines whose first non-blank
    character is ``#`` or ``!`` are comments; a ``#`` later in a line is part of the value.
    Backslash escapes and continuation lines are refused rather than half-understood,
    and so is a key given twice (Java would keep the last one silently).
    """
    settings: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip(" \t\f")
        if not line or line[0] in "#!":
            continue
        where = f"{source}:{number}"
        if "\\" in line:
            raise UsageError(f"{where}: backslash escapes and continuation lines are "
                             "not supported in netsift presets")
        end = next((i for i, char in enumerate(line) if char in _SEPARATORS), len(line))
        key, rest = line[:end], line[end:].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:]
        if key in settings:
            raise UsageError(f"{where}: {key} is set twice")
        settings[key] = rest.strip()
    return settings


def discovery_script_path() -> Path:
    """The packaged GPU discovery script for ``spark.*.resource.gpu.discoveryScript``.

    The netsift image installs the same script as ``/opt/spark/getGpusResources.sh``,
    the path the gpu preset names; this copy serves Spark runs outside that image.
    """
    return _PRESET_DIR / "getGpusResources.sh"
