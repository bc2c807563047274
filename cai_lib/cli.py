"""The `cai` console script. Every failure is one line on stderr and a non-zero exit.

Subcommands import their module lazily so `cai score` does not pay for torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import CaiError


def _cmd_run(a):
    from .config import parse_overrides
    from .driver import run_pipeline
    if a.gpu_gib is not None and not a.gpu_gib > 0:
        raise CaiError(f"--gpu-gib {a.gpu_gib}: must be a positive number of GiB, e.g. --gpu-gib 80")
    mode = "only" if a.preflight else "off" if a.no_preflight else "auto"
    return run_pipeline(profile=a.profile, run_id=a.run_id, stages=a.stages, strict=a.strict,
                        overrides=parse_overrides(a.set), preflight=mode, gpu_gib=a.gpu_gib)


def _cmd_score(a):
    from .scoring import score_file
    summary = score_file(a.responses, a.output)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_leakage(a):
    from .split import leakage_cli
    return leakage_cli(a.train, a.eval, a.report)


def _cmd_stats(a):
    from .stats import stats_files
    print(json.dumps(stats_files(a.base, a.trained, field=a.field), indent=2))
    return 0


def _cmd_eval(a):
    from .evaluate import eval_cli
    return eval_cli(run_dir=a.run, items=a.items, out_dir=a.output, force=a.force)


def _cmd_train(a):
    # Stage 02 outside the notebooks; several processes go through `accelerate launch`.
    from .train_launch import launch_command, run as train_run
    if a.num_processes is not None and a.num_processes < 1:
        raise CaiError(f"--num-processes {a.num_processes}: must be at least 1 (one process per GPU)")
    if a.accelerate_config or (a.num_processes or 1) > 1:
        import subprocess
        cmd = launch_command(a.run, accelerate_config=a.accelerate_config, num_processes=a.num_processes,
                             main_process_port=a.main_process_port)
        print("cai train: " + " ".join(cmd), file=sys.stderr, flush=True)
        return subprocess.call(cmd)
    train_run(["--run-dir", a.run])
    return 0


# Exit codes, shown in every `cai <cmd> --help` (argparse itself exits 2 on a usage error).
_COMMON_EXITS = ("  0    done\n"
                 "  1    bad input or environment: one line on stderr naming the file/key and the fix\n"
                 "  2    usage error (unknown option, missing argument)\n"
                 "  130  interrupted (Ctrl-C): rerun the same command to resume")
EXIT_CODES = {
    "run": _COMMON_EXITS + "\n  3    --strict and the Stage 1 gate verdict is not PASS",
    "score": _COMMON_EXITS,
    "leakage": _COMMON_EXITS + "\n  2    also: a leak was found (the eval set overlaps training or few-shot data)",
    "stats": _COMMON_EXITS,
    "eval": _COMMON_EXITS + "\n  2    also: the items leak into the run's training or few-shot data",
    "train": _COMMON_EXITS + "\n  N    with several processes: accelerate launch's own exit status",
}


def _sub(sub, name: str, help: str, description: str | None = None):
    return sub.add_parser(name, help=help, description=description or help,
                          epilog="exit codes:\n" + EXIT_CODES[name], formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="cai", description="cai-stage1: Stage 1 bootstrap of a base model.",
                                epilog="`cai <command> --help` shows each command's arguments and exit codes.")
    p.add_argument("--version", action="version", version=f"cai-stage1 {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    r = _sub(sub, "run", "execute the stage notebooks with papermill and render HTML",
             "Run the pipeline's stage notebooks (00 baseline … 04 report) for one run; each stage prints one "
             "progress line and the report's path; the gate verdict at the end.")
    r.add_argument("--profile", default=None,
                   help="profile name in notebooks/params or a YAML path (default: an existing run's own "
                        "config.json, else cpu-quick)")
    r.add_argument("--run-id", default="", help="run name under $CAI_BASE_DIR/runs: letters, digits, - _ . "
                                                 "(default: a new timestamped run)")
    r.add_argument("--stages", default=None, help="comma list, e.g. 00,01 (default: all)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, validated like a profile value (repeatable)")
    r.add_argument("--strict", action="store_true", help="exit 3 unless the gate verdict is PASS")
    pf = r.add_mutually_exclusive_group()
    pf.add_argument("--preflight", action="store_true",
                    help="estimate each stage's GPU memory and time for this profile and card, then stop "
                         "(on a GPU machine cai run does this check before the stages anyway)")
    pf.add_argument("--no-preflight", action="store_true", help="skip the memory check before the stages")
    r.add_argument("--gpu-gib", type=float, default=None,
                   help="card memory for the pre-flight (default: this machine's GPU), e.g. 80")
    r.set_defaults(func=_cmd_run)

    s = _sub(sub, "score", "score response records (strict/loose/form)")
    s.add_argument("responses", help="JSONL of response records (id, type, instruction, checks, response)")
    s.add_argument("-o", "--output", default=None, help="write the scored records here (JSONL); the summary "
                                                        "is printed either way")
    s.set_defaults(func=_cmd_score)

    lk = _sub(sub, "leakage", "check an eval set against a train set for leaks")
    lk.add_argument("train", help="training items (JSONL with id and instruction)")
    lk.add_argument("eval", help="evaluation items (JSONL with id and instruction)")
    lk.add_argument("--report", default=None, help="write the overlap report (JSON) here")
    lk.set_defaults(func=_cmd_leakage)

    st = _sub(sub, "stats", "paired statistics of base vs trained scored records")
    st.add_argument("base", help="scored records of the base model (JSONL, from cai score or cai eval)")
    st.add_argument("trained", help="scored records of the trained model, same ids")
    st.add_argument("--field", default="strict", choices=["strict", "loose", "form"],
                    help="the pass/fail field compared (default: strict)")
    st.set_defaults(func=_cmd_stats)

    ev = _sub(sub, "eval", "evaluate a run's base and trained model on any item file")
    ev.add_argument("--run", required=True, help="run directory with config.json and adapter/")
    ev.add_argument("--items", required=True, help="eval items (JSONL, the schema of cai_lib/items.py)")
    ev.add_argument("-o", "--output", default=None,
                    help="output folder (default: RUN/evals/<items name>); never inside a run's results/, data/, "
                         "adapter/ or checkpoints/")
    ev.add_argument("--force", action="store_true", help="replace results already in the output folder")
    ev.set_defaults(func=_cmd_eval)

    tr = _sub(sub, "train", "run stage 02 (DPO) for a run directory, on one or several processes")
    tr.add_argument("--run", required=True, help="run directory with config.json and data/preference_pairs.jsonl")
    tr.add_argument("--accelerate-config", default=None, help="accelerate config, e.g. configs/accelerate/ddp.yaml")
    tr.add_argument("--num-processes", type=int, default=None, help="processes (GPUs) to launch")
    tr.add_argument("--main-process-port", type=int, default=None, help="rendezvous port (default 29500)")
    tr.set_defaults(func=_cmd_train)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
    except CaiError as exc:
        print(f"cai {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"cai {args.command}: interrupted — rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `cai ... | head` closed the pipe: nothing left to say, and no traceback at exit.
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:  # a full disk, a read-only folder: one line naming the file
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"cai {args.command}: error: {where}{exc.strerror or exc} — free space or fix permissions, then "
              "rerun the same command", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
