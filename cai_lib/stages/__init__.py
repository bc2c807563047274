"""The five stages: one entry each, and the records that say whether a stage's results
can be trusted.

Stage entries: each stage is one call, `stages.<name>.run(run_dir, cfg, overwrite=...)`
(modules baseline, data, train, evaluate, report), which begins the stage, does its work,
writes its outputs, records it with `finish` and returns a `StageResult` the notebook
displays — the notebook never records a stage or reads back a file the stage just wrote.

The records (`begin`, `finish`, `problem`, hashes, parameters) live in `stages.records`
and are re-exported here; modules the entries themselves use (views) import
`stages.records`, so the package's import graph stays acyclic.
"""

from __future__ import annotations

from .records import (BY_KEY, STAGES, Stage, StageResult, begin, finish, hash_path, hashes,  # noqa: F401
                      input_files, notebook_parameter_names, output_hashes, problem, record, stage,
                      stage_params)
from . import baseline, data, evaluate, report, train  # noqa: E402,F401  (the entries)
