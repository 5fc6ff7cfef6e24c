"""`CommandRef`: a command-line handler named by module and function, imported when it runs.

The parser is built from light modules only, so `lpdet --help` (and a typo's usage error)
answers at once; the handler's module, which loads torch, onnxruntime and the rest, is imported
when its command actually runs."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandRef:
    module: str  # e.g. "lpdet.cli.model_commands"
    function: str  # e.g. "cmd_eval"

    def __call__(self, args) -> None:
        getattr(importlib.import_module(self.module), self.function)(args)
