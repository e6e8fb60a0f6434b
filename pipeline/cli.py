"""Shared command-line handling for the entry points: overrides in, one-line errors out.

    python -m pipeline.<entry> [--cfg] [--debug] [--config-dir DIR] key=value ... +key=value ...

`--cfg` prints the composed config and exits; `--config-dir DIR` adds DIR to the config search
path (as Hydra's own flag does), so a generated `DIR/experiment/full_run.yaml` is found by
`experiment=full_run`. Errors the user can fix print as one line (exit 2); anything else prints
one line plus where to get the traceback (exit 1); `--debug` or PIPELINE_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from pipeline.config.load import as_dict, load_config
from pipeline.config.schema import Study
from pipeline.errors import UserError


def parse_args(argv: list[str]) -> tuple[list[str], dict]:
    overrides, flags, i = [], {"cfg": False, "debug": False, "config_dir": None}, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--cfg":
            flags["cfg"] = True
        elif arg == "--debug":
            flags["debug"] = True
        elif arg == "--config-dir" or arg.startswith("--config-dir="):
            if "=" in arg:
                flags["config_dir"] = arg.split("=", 1)[1]
            else:
                i += 1
                if i >= len(argv):
                    raise UserError("--config-dir needs a directory: --config-dir DIR")
                flags["config_dir"] = argv[i]
        elif arg in ("-h", "--help"):
            flags["help"] = True
        elif arg.startswith("-"):
            raise UserError(f"unknown flag {arg}: use key=value overrides, --cfg, --debug or --config-dir DIR")
        else:
            overrides.append(arg)
        i += 1
    if flags["config_dir"]:
        path = os.path.abspath(flags["config_dir"])
        if not os.path.isdir(path):
            raise UserError(f"--config-dir {flags['config_dir']} is not a directory")
        overrides.append(f"hydra.searchpath=[file://{path}]")
    return overrides, flags


def load_study(overrides: list[str], flags: dict):
    """The validated Study for an entry point; with `--cfg`, print it and return None instead."""
    import json

    study = load_config("study", Study, overrides)
    if flags.get("cfg"):
        print(json.dumps(as_dict(study), indent=2))
        return None
    return study


def is_main_process() -> bool:
    """False on the ranks > 0 of a multi-process run (torchrun, accelerate and our srun set RANK)."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def run_main(main: Callable[[list[str], dict], int], usage: str) -> None:
    """Call `main(overrides, flags)` and turn its outcome into an exit status.

    In a multi-process run every rank exits with the same status, but only the main process prints the
    one-line error of a UserError (every rank meets the same bad input; N copies of one line hide nothing);
    an unexpected error is printed by each rank that meets it, named by its rank.
    """
    debug = os.environ.get("PIPELINE_DEBUG") == "1" or "--debug" in sys.argv[1:]
    rank = "" if is_main_process() else f"rank {os.environ.get('RANK')}: "
    try:
        overrides, flags = parse_args(sys.argv[1:])
        if flags.get("help"):
            print(usage)
            sys.exit(0)
        code = main(overrides, flags)
    except UserError as err:
        if debug:
            traceback.print_exc()
        if not rank or debug:
            print(f"{rank}error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, traceback on request
        if debug:
            traceback.print_exc()
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"{rank}error: {type(err).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
