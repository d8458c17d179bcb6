"""`install-cni`: the agent as upstream's `istio-cni` chart starts it.

The chart runs `command: ["install-cni"]` with `--log_output_level=<levels>` and, when
`global.logAsJson` is set, `--log_as_json`; everything else comes from the environment (its
ConfigMap and the pod's env), which `run` reads the same way. So this is `istio-cni-node run`
with upstream's flags: the levels configure our loggers and, for the `cni-plugin` scope, the
plugin's `plugin_log_level` (admin.log_options). The image puts `install-cni` on PATH as a
link to the agent's bundle; `by_program_name` picks this command when started under that name.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace

import click

from admin import log_options
from admin.run_cmd import read_configs, serve
from cni import __version__ as VERSION
from cni.values import BadValue, go_bool
from node_daemon.config import ConfigError

PROGRAM = "install-cni"
log = logging.getLogger(__name__)


def _go_bool(_ctx: click.Context, _param: click.Parameter, value: str | None) -> bool:
    """`--log_as_json` is a Go boolean flag: bare, or `=true`/`=false`."""
    if value is None:
        return False
    try:
        return go_bool(value)
    except BadValue as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command(PROGRAM, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log_output_level", "output_levels", default=None, metavar="LEVELS",
              help="Upstream's per-scope levels: <scope>:<level>,... (scopes default, "
                   "cni-agent, install, repair, cni-plugin, all; levels debug, info, warn, "
                   "error, fatal, none). [default: LOG_LEVEL, else info]")
@click.option("--log_as_json", "as_json", is_flag=False, flag_value="true", default=None,
              callback=_go_bool, metavar="[=BOOL]",
              help="One JSON object per log line (time, level, scope, msg).")
def install_cni_command(output_levels: str | None, as_json: bool) -> None:
    """Run the node agent as upstream's chart starts it (same as `istio-cni-node run`)."""
    try:
        levels = log_options.parse_output_levels(output_levels or "")
        cfg, installer_cfg = read_configs(os.environ)
    except (log_options.LogOptionsError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    default = log_options.LEVELS[cfg.log_level]
    log_options.configure(levels, as_json, default)
    if levels.plugin_level is not None:
        installer_cfg = replace(installer_cfg, plugin_log_level=levels.plugin_level)
    log.info("istio-cni-node %s (install-cni); chart's CURRENT_AGENT_VERSION=%s", VERSION,
             os.environ.get("CURRENT_AGENT_VERSION", "") or "unset")
    if levels.unknown_scopes:
        log.info("--log_output_level: no such scope here, ignored: %s",
                 ", ".join(sorted(set(levels.unknown_scopes))))
    serve(cfg, installer_cfg, os.environ)


def main() -> None:
    install_cni_command(prog_name=PROGRAM)


def by_program_name() -> None:
    """The frozen agent's entry: `install-cni` when started under that name (the image's
    link), else the `istio-cni-node` CLI."""
    if os.path.basename(sys.argv[0]) == PROGRAM:
        main()
        return
    from admin.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
