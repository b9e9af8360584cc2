"""`qnas report`, `qnas studies`, `qnas show`: look at search studies without writing code."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from qnas.commands._args import positive_int, study_name
from qnas.commands._output import pct, print_architectures
from qnas.errors import QnasError

__all__ = ["add_parser"]

_STORAGE_HELP = "Optuna storage URL (default sqlite:///studies/NAME.db, what `qnas search` writes)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    r = subparsers.add_parser(
        "report", help="write an HTML report (Pareto fronts, size, BitOps, quantization drop, finetune results, "
        "histories) and trials.csv",
        description="Write a self-contained HTML report of a search study (plotly.js embedded, opens offline) "
        "and a CSV with one row per trial, and print the Pareto front at the target setting. Existing output "
        "files are overwritten (they are derived from the study).",
    )
    r.add_argument("--study", type=study_name, required=True, help="study name (as given to `qnas search --study`)")
    r.add_argument("--storage", help=_STORAGE_HELP)
    r.add_argument("--out", type=Path, help="HTML file to write (default studies/NAME/report.html)")
    r.add_argument("--csv", type=Path, help="CSV file to write, ending in .csv (default studies/NAME/trials.csv)")
    r.add_argument("--cdn", action="store_true", help="link plotly.js from its CDN instead of embedding it "
                   "(~5 MB smaller, needs internet to view)")
    r.set_defaults(func=_report)

    s = subparsers.add_parser(
        "studies", help="list studies with trial counts and best accuracy",
        description="List the studies in a storage: trials by state, target setting, parameter bound and the "
        "best feasible predicted top-1 at the target. Without --storage, every SQLite file studies/*.db in the current "
        "directory is read (each is one storage; `qnas search` writes studies/NAME.db by default).",
    )
    s.add_argument("--storage", help="Optuna storage URL to list (default: every studies/*.db here)")
    s.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    s.set_defaults(func=_studies)

    w = subparsers.add_parser(
        "show", help="table of the best feasible trials of a study",
        description="Show the best feasible trials of a study by predicted top-1 at its target setting (or its "
        "Pareto front with --pareto): trial number, params, MACs, predicted top-1 in % at every setting, then each "
        "architecture on a line of its own (never folded). "
        "Duplicate architectures are listed once, under the trial that scored them.",
    )
    w.add_argument("--study", type=study_name, required=True, help="study name")
    w.add_argument("--storage", help=_STORAGE_HELP)
    w.add_argument("--pareto", action="store_true", help="only the Pareto front (accuracy vs params), by params")
    w.add_argument("--top", type=positive_int, help="how many trials (default 10; all of the front with --pareto)")
    w.add_argument("--json", action="store_true", help="print JSON instead of a table")
    w.set_defaults(func=_show)


# ----------------------------------------------------------------------------- report


def _report(args: argparse.Namespace) -> int:
    from qnas import report as R

    out = args.out or Path("studies") / args.study / "report.html"
    csv = args.csv or Path("studies") / args.study / "trials.csv"
    if out.suffix.lower() not in (".html", ".htm"):
        raise QnasError(f"--out {str(out)!r} should end in .html")
    for flag, path in (("--out", out), ("--csv", csv)):  # both checked before either is written
        _check_file_target(flag, path)
    if csv.suffix.lower() != ".csv":
        raise QnasError(f"--csv {str(csv)!r} should end in .csv")
    if out.resolve() == csv.resolve():  # the second write would replace the first (a link named x.csv)
        raise QnasError(f"--csv {str(csv)!r} is the same file as --out {str(out)!r}; give two files")
    messages = []
    # (temporary file, target): both written before either replaces its target, and where a directory already
    # exists the temporary file is created before the study is even opened (a place no one can write fails first).
    # Staged beside the resolved target (the file replaced), so a link named report.html is written through.
    staged = [(real.with_name(f".{real.name}.{os.getpid()}.tmp"), place, real)
              for place, real in ((p, p.resolve()) for p in (out, csv))]
    path = out  # the file being written, for the error
    try:
        for tmp, place, _ in staged:
            if tmp.parent.is_dir():
                path = place
                tmp.touch()
        study = R.open_study(args.study, args.storage)
        target = R.study_target(study)
        path = out
        R.write_report(study, staged[0][0], cdn=args.cdn, storage=args.storage)
        path = csv
        R.write_csv(study, staged[1][0])
        for tmp, path, real in staged:
            existed = path.exists()
            if existed:
                shutil.copymode(real, tmp)  # an overwritten file keeps its permissions
            os.replace(tmp, real)
            messages.append(f"{'overwrote' if existed else 'wrote'} {path} ({path.stat().st_size / 1e6:.1f} MB)")
    except OSError as exc:
        raise QnasError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        for tmp, _, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    console = Console()
    _print_trials(console, study, R.best_trials(study, top=None, pareto=True), target,
                  f"Pareto front of {args.study!r} at {target} (predicted top-1 %)", short=True)
    for m in messages:
        console.print(m, highlight=False)
    return 0


def _check_file_target(flag: str, path: Path) -> None:
    """QnasError unless ``path`` can become a file: not a directory, no file where a parent directory goes."""
    if path.is_dir():
        raise QnasError(f"{flag} {str(path)!r} is a directory; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise QnasError(f"{flag} {str(path)!r}: {str(parent)!r} is not a directory")
            break


# ----------------------------------------------------------------------------- studies


def _studies(args: argparse.Namespace) -> int:
    from qnas import report as R

    urls = [args.storage] if args.storage else R.default_storages()
    rows = []
    for url in urls:
        try:
            rows.extend(R.list_studies(url))
        except QnasError as exc:
            if args.storage:
                raise
            # One unreadable file among studies/*.db should not hide the others.
            sys.stderr.write(f"qnas: warning: skipped {url}: {exc}\n")
    if args.json:
        json.dump([{**r.__dict__, "started": r.started.isoformat() if r.started else None} for r in rows],
                  sys.stdout)
        sys.stdout.write("\n")
        return 0
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:  # piped: rich would fold paths at 80 columns
        console = Console(width=250)
    if not rows:
        where = args.storage or f"{Path.cwd() / 'studies'}/*.db"
        console.print(f"no studies in {where} (pass --storage URL for another storage)", highlight=False)
        return 0
    table = Table(title="studies", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    storages = sorted({r.storage for r in rows})
    if len(storages) == 1:
        table.caption, table.caption_justify = f"storage: {storages[0]}", "left"
    else:
        table.add_column("storage", overflow="fold")
    table.add_column("study", overflow="fold", min_width=10)
    for c in ("trials", "complete", "failed", "running"):  # by state; pruned/waiting only in the total
        table.add_column(c, justify="right", no_wrap=True)
    table.add_column("target", no_wrap=True)
    table.add_column("bound", justify="right", no_wrap=True)
    table.add_column("best pred. top-1", justify="right", no_wrap=True)
    for r in rows:
        best = "–" if r.best_top1 is None else f"{pct(r.best_top1)}% #{r.best_trial}"
        cells = [r.name, str(r.trials), str(r.complete), str(r.failed), str(r.running), r.target or "–",
                 _compact(r.max_params) if r.max_params else "–", best]
        table.add_row(*([] if len(storages) == 1 else [r.storage.removeprefix("sqlite:///")]), *cells)
    console.print(table)
    return 0


def _compact(n: int) -> str:
    """1000000 -> 1M, 2500000 -> 2.5M, 400000 -> 400k (a parameter bound at a glance)."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


# ----------------------------------------------------------------------------- show


def _show(args: argparse.Namespace) -> int:
    from qnas import report as R
    from qnas.study import StudyAttrs, TrialAttrs

    study = R.open_study(args.study, args.storage)
    target = R.study_target(study)
    top = args.top if args.top or args.pareto else 10
    trials = R.best_trials(study, top=top, pareto=args.pareto)
    if args.json:
        def row(a: TrialAttrs) -> dict:
            return {"number": a.number, "arch": a.arch, "params": a.params, "macs": a.macs, "size_bytes": a.size_bytes,
                    "bitops": a.bitops, "genome": a.genome,
                    **{k: v for k, v in a.scores.items() if not k.startswith("loss_")}}

        json.dump([row(TrialAttrs.of(t)) for t in trials], sys.stdout)
        sys.stdout.write("\n")
        return 0
    bound = StudyAttrs.from_attrs(study.user_attrs).max_params
    under = f" under {bound:,} params" if bound else ""
    title = (f"Pareto front of {args.study!r} at {target}{under}" if args.pareto
             else f"best {len(trials)} feasible trials of {args.study!r} by "
             f"{'ranker-' if R.study_objective(study) == 'pred_top1' else 'GHN-'}predicted top-1 at {target}{under}")
    _print_trials(Console(), study, trials, target, title)
    return 0


def _print_trials(console: Console, study, trials, target: str, title: str, short: bool = False) -> None:
    """The table, then each trial's architecture on a line of its own (never folded: users copy it)."""
    from qnas.study import TrialAttrs

    console.print(_trials_table(study, trials, target, title, short))
    print_architectures(console, [(t.number, TrialAttrs.of(t).arch or "") for t in trials])


def _trials_table(study, trials, target: str, title: str, short: bool = False) -> Table:
    """Trials as a rich table; ``short`` (the report's terminal summary) keeps only target and FP32."""
    from qnas import report as R
    from qnas.study import TrialAttrs

    settings = R.settings_of(trials) or [target]
    if short:
        settings = [s for s in dict.fromkeys([target, "fp32"]) if s in settings]
    predicted = R.study_objective(study) == "pred_top1"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for c in ("trial", "params") if short else ("trial", "params", "MACs"):
        table.add_column(c, justify="right", no_wrap=True)
    if predicted:
        table.add_column(f"pred. {target} *", justify="right", no_wrap=True, style="bold")
    for s in settings:
        star = s == target and not predicted
        table.add_column(f"{'GHN ' if predicted else ''}{s}{' *' if star else ''}", justify="right", no_wrap=True,
                         style="bold" if star else None)
    caption = ("pred. = the ranker's predicted top-1 after training (qnas.ranker); GHN = top-1 of the "
               "GHN-predicted parameters, also a prediction; in %; * = what the search maximized") if predicted else \
        "predicted top-1 in % (the untrained network with GHN-predicted parameters); * = the target setting"
    table.caption = caption if trials else "no feasible scored trials yet"
    table.caption_justify = "left"
    for t in trials:
        a = TrialAttrs.of(t)
        accs = [pct(a.top1(s)) for s in settings]
        if predicted:
            accs.insert(0, pct(R.value(t, target, "pred_top1")))
        macs = [] if short else [f"{(a.macs or 0) / 1e6:,.1f}M"]
        table.add_row(str(t.number), f"{a.params:,}", *macs, *accs)
    return table
