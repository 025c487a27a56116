"""The code location: every domain's definitions merged, with the shared resources bound once.

The settings (:mod:`loyalty_ops.defs.settings`) are read and validated first; each domain builds its
resources from them.

Each domain folder under ``loyalty_ops/defs/`` exposes ``defs`` in its ``definitions.py``; they are
discovered here so adding a domain never means editing a central list.
"""

from __future__ import annotations

import importlib
import pkgutil

import dagster as dg

import loyalty_ops.defs as defs_package
from loyalty_ops.defs.settings import current_settings
from loyalty_ops.defs.shared_resources import shared_resources


def domain_definitions() -> list[dg.Definitions]:
    found = []
    for module_info in sorted(pkgutil.iter_modules(defs_package.__path__), key=lambda m: m.name):
        if not module_info.ispkg:
            continue
        try:
            module = importlib.import_module(f"{defs_package.__name__}.{module_info.name}.definitions")
        except ModuleNotFoundError as exc:
            if exc.name == f"{defs_package.__name__}.{module_info.name}.definitions":
                continue
            raise
        found.append(module.defs)
    return found


def build_definitions() -> dg.Definitions:
    # The environment first, all of it: a bad variable refuses the load with every problem listed (shown in
    # the UI as the code location's load error) before any domain is imported or any run can start.
    settings = current_settings()
    # Every job runs its steps in one process unless it says otherwise: the steps of these jobs run one
    # after another anyway, and a Python start-up per step cost about 4x the run time of a backup.
    return dg.Definitions.merge(
        *domain_definitions(),
        dg.Definitions(resources=shared_resources(settings), executor=dg.in_process_executor),
    )


defs = build_definitions()
