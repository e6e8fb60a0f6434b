"""Compose a config from conf/ with Hydra, merge it strictly into the schema, validate it once.

Every entry point calls `load_config(<primary>, Study, overrides)`, which
  1. composes `conf/<primary>.yaml` with the command-line overrides (Hydra's Compose API),
  2. merges the result into a fresh structured copy of the schema, so misspelled keys -- even ones
     added with `+` -- wrong types and bad enum values fail here, before any compute is spent
     (`OmegaConf.to_object` alone drops a misspelled `+model.dropuot` silently),
  3. converts it to dataclasses once (`OmegaConf.to_object`) and runs every value check
     (pipeline/config/validate.py).
All failures become a one-line `UserError` that names the dotted key and what to change.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config.schema import CONF_DIR, DataConfig, ModelConfig, Study, TrackingConfig, TrainConfig
from pipeline.config.validate import validate
from pipeline.errors import UserError

# --- composition ---------------------------------------------------------------------------------
_OMEGACONF_KEY = re.compile(r"full_key: (\S+)")


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    key = _OMEGACONF_KEY.search(text)
    return f"{key.group(1)}: {first}" if key and key.group(1) not in first else first


def compose(primary: str, overrides: list[str]):
    """Compose conf/<primary>.yaml with overrides; Hydra's errors become one-line UserErrors."""

    GlobalHydra.instance().clear()
    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=primary, overrides=list(overrides))
    except HydraException as err:
        message = _one_line(err)
        unknown = re.match(r"Could not override '([\w.]+)'", message)
        if unknown:
            message = (f"unknown key {unknown.group(1)}: check the spelling "
                       "(`python -m pipeline.train --cfg` prints every key)")
        elif err.__cause__ is not None:
            message = f"{message}: {_one_line(err.__cause__)}"
        if "Could not find" in message or "could not find" in message.lower():
            group = re.search(r"'([\w/]+)/([\w.-]+)'", message)
            if group:
                options = sorted(p.stem for p in (CONF_DIR / group.group(1)).glob("*.yaml"))
                message = (f"unknown preset {group.group(1)}={group.group(2)}: "
                           f"choose one of {', '.join(options)}")
        raise UserError(f"bad override: {message}") from err
    except OmegaConfBaseException as err:
        raise UserError(f"bad override: {_one_line(err)}") from err
    finally:
        GlobalHydra.instance().clear()


def to_schema(cfg: Any, schema: type):
    """Merge a composed config into `schema` strictly and return the dataclass instance."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
        container = {k: v for k, v in container.items() if k != "hydra"}
        merged = OmegaConf.merge(OmegaConf.structured(schema), container)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise UserError(f"{missing[0]} has no value: set it on the command line, e.g. {missing[0]}=...")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        message = _one_line(err)
        if "not in" in message or "Key '" in message:
            message += " (check the spelling; `python -m pipeline.<entry> --cfg` prints every key)"
        raise UserError(f"invalid config: {message}") from err


# The full run's budget is given one way: FLOPs, or hardware x time (pipeline/decide/budget.py).
_BUDGET_AS_FLOPS = ("budget.flops",)
_BUDGET_AS_TIME = ("budget.days",)


def _override_keys(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o or o.startswith("~")}


def command_line_budget_wins(cfg, overrides: list[str]):
    """A budget given on the command line replaces the other form a preset set.

    `experiment=cpu_tiny budget.gpu=h100_sxm budget.gpus=32 budget.days=14` means "this hardware for
    this long", not "this and the preset's budget.flops": the preset's flops are dropped (and, the
    other way round, `budget.flops=...` drops a preset's budget.days, keeping its GPUs for the
    wall-clock estimate). Both forms on the command line stay an error (budget.py says so).
    """
    keys = _override_keys(overrides)
    if cfg is None or "budget" not in cfg or cfg.budget is None:
        return cfg
    if keys & set(_BUDGET_AS_TIME) and not keys & set(_BUDGET_AS_FLOPS) and cfg.budget.get("flops") is not None:
        cfg.budget.flops = None
    elif keys & set(_BUDGET_AS_FLOPS) and not keys & set(_BUDGET_AS_TIME) and cfg.budget.get("days") is not None:
        cfg.budget.days = None
    return cfg


def load_config(primary: str, schema: type, overrides: list[str]):
    cfg = compose(primary, overrides)
    if schema is Study:
        cfg = command_line_budget_wins(cfg, overrides)
    obj = to_schema(cfg, schema)
    validate(obj)
    return obj


def as_dict(obj) -> dict:
    """A plain, JSON-able dict of a config dataclass (enums as their values)."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True, enum_to_str=True)


def wandb_key_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def register_schemas() -> None:
    """Register the schemas in Hydra's ConfigStore (for `--cfg` help and IDEs that read it)."""

    store = ConfigStore.instance()
    store.store(name="study_schema", node=Study)
    store.store(group="model", name="schema", node=ModelConfig)
    store.store(group="train", name="schema", node=TrainConfig)
    store.store(group="tracking", name="schema", node=TrackingConfig)
    store.store(group="data", name="schema", node=DataConfig)
