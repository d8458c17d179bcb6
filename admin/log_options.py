"""Upstream's logging flags, as `install-cni` takes them: `--log_output_level` and `--log_as_json`.

`--log_output_level` is a comma-separated list of `<scope>:<level>`; an item without a scope
sets the `default` scope, and the scope `all` sets every scope. Levels are upstream's: debug,
info, warn, error, fatal, none. Upstream's scopes map onto our loggers (`SCOPES`); the scope
`cni-plugin` also sets the plugin's own `plugin_log_level`, as upstream derives it. A scope we
have no counterpart for is accepted and reported (upstream ignores unknown scopes too); a bad
level or item is a `LogOptionsError` naming it.

`--log_as_json` writes one JSON object per line with upstream's keys (`time`, `level`,
`scope`, `msg`), so log pipelines parsing upstream's agent keep working.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR, "fatal": logging.CRITICAL, "none": logging.CRITICAL + 10}
"""Upstream's level names and the `logging` level each becomes (`none`: nothing is logged)."""

SCOPES: dict[str, tuple[str, ...]] = {
    "default": ("",),
    "cni-agent": ("node_daemon", "admin"),
    "install": ("installer",),
    "repair": ("node_daemon.controller", "node_daemon.actions", "node_daemon.broken",
               "node_daemon.drift"),
    "cni-plugin": ("cni-plugin", "istio-cni", "cni"),
}
"""Upstream's scope -> our logger names ("" is the root logger). `cni-plugin` is where the
plugin's lines are re-emitted (node_daemon.logsink), and the plugin's own loggers (`istio-cni`,
`cni.*`): the agent runs the plugin's code for the calls it serves, and a served call's lines
are made at these loggers' level, so `cni-plugin:debug` gives a served call its debug lines as
it gives an in-process call's report (the agent's repair and drift, which run the same code,
then log its debug lines too)."""

PLUGIN_SCOPE = "cni-plugin"
ALL = "all"
PLUGIN_LEVELS = {"debug": "debug", "info": "info", "warn": "warn", "error": "error",
                 "fatal": "error", "none": "none"}
"""Upstream level -> the plugin's `plugin_log_level` (the plugin has no `fatal`)."""


class LogOptionsError(ValueError):
    """A `--log_output_level` item that cannot be used; the message names it."""


@dataclass(frozen=True)
class OutputLevels:
    """`--log_output_level` parsed: our logger name -> level, and what else it said."""

    loggers: dict[str, int] = field(default_factory=dict)
    plugin_level: str | None = None
    """The plugin's `plugin_log_level` when the flag sets `cni-plugin` (or `all`)."""
    unknown_scopes: tuple[str, ...] = ()


def parse_output_levels(text: str) -> OutputLevels:
    """Upstream's `--log_output_level` text -> `OutputLevels`; later items win."""
    loggers: dict[str, int] = {}
    plugin_level = None
    unknown: list[str] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        scope, sep, level = item.rpartition(":")
        scope = scope.strip() if sep else "default"
        level = level.strip().lower()
        if level not in LEVELS or (sep and not scope) or ":" in scope:
            raise LogOptionsError(
                f"--log_output_level: {item!r} is not <scope>:<level> with a level of "
                f"{', '.join(LEVELS)}")
        scopes = list(SCOPES) if scope == ALL else [scope]
        for name in scopes:
            if name not in SCOPES:
                unknown.append(name)
                continue
            for logger in SCOPES[name]:
                loggers[logger] = LEVELS[level]
            if name == PLUGIN_SCOPE:
                plugin_level = PLUGIN_LEVELS[level]
    return OutputLevels(loggers, plugin_level, tuple(unknown))


class JsonFormatter(logging.Formatter):
    """One JSON object per record with upstream's keys; the scope is our logger's name."""

    _LEVEL = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
              logging.ERROR: "error", logging.CRITICAL: "fatal"}

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {"time": f"{stamp}.{int(record.msecs * 1000):06d}Z",
                 "level": self._LEVEL.get(record.levelno, record.levelname.lower()),
                 "scope": record.name if record.name != "root" else "default",
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(levels: OutputLevels, as_json: bool, default_level: int) -> None:
    """Install the one stderr handler and the per-logger levels (the root logger gets
    `default_level` unless the flag set `default`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levels.loggers.get("", default_level))
    for name, level in levels.loggers.items():
        if name:
            logging.getLogger(name).setLevel(level)
