"""`vote`: a thin click shell over the library. Errors print one line and exit 2.

Offline commands (no model): eval, ablate, submit. Model commands (run, train, serve,
models, adapters, data, quickstart) live in ensemble.cli.jobs and are added below.
"""
from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ensemble.errors import EnsembleError


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """EnsembleError -> 'error: ...' on stderr and exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EnsembleError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: finished work is saved; rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ensemble")
def main() -> None:
    """Many fine-tuned LoRA voters from one base LLM, combined by voting."""
    from ensemble.memory import bound_kernel_cache

    bound_kernel_cache()  # before any model runs: oneDNN reads it once (ensemble.memory)


# -- shared option parsing ----------------------------------------------------
def parse_weights(spec: str | None) -> dict[str, float] | None:
    """'a=1,b=0.5' or a JSON/YAML file of voter -> weight."""
    if not spec:
        return None
    path = Path(spec)
    if path.is_file():
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise EnsembleError(f"{path}: weights file must map voter names to numbers")
        pairs: list[tuple[Any, Any]] = list(data.items())
    else:
        pairs = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise EnsembleError(f"--weights: '{part}' is not VOTER=WEIGHT (e.g. --weights a=1,b=0.5), "
                                    "nor an existing file")
            pairs.append((name.strip(), value))
    try:
        return {str(k): float(v) for k, v in pairs}
    except (TypeError, ValueError):
        raise EnsembleError(f"--weights: every weight must be a number (got {spec!r})") from None


def parse_options(specs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """--option confidence.top_fraction=0.5 -> {"confidence": {"top_fraction": 0.5}}."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise EnsembleError(f"--option '{spec}': expected METHOD.KEY=VALUE, e.g. confidence.top_fraction=0.5")
        out.setdefault(method, {})[name] = yaml.safe_load(value)
    return out


CLI_FIX = "pass --fit-on dev (or --dev-items FILE), or give weighted its --weights"


def fit_options(weights: dict[str, float] | None, options: Sequence[str]) -> dict[str, dict[str, Any]]:
    method_options = parse_options(options)
    if weights is not None:
        method_options.setdefault("weighted", {})["weights"] = weights
    return method_options


fit_flags = [
    click.option("--gold", "gold", type=click.Path(), help="Gold answers: rows item,answer (JSONL/CSV) or a dataset (file, Parquet/Arrow, save_to_disk folder)."),
    click.option("--method", "-m", "methods", multiple=True, help="Voting method (repeatable). Default: every method the data allows."),
    click.option("--weights", help="Voter weights for `weighted`: a=1,b=0.5 or a JSON/YAML file."),
    click.option("--fit-on", type=click.Choice(["none", "dev"]), default="none", show_default=True,
                 help="Fit weighted/select/stack on dev items and choose the method on dev; metrics cover only the other items."),
    click.option("--dev-fraction", type=float, default=0.3, show_default=True, help="Share of gold items used as dev: whole problems (<id>#k together), drawn by a seeded hash of the id."),
    click.option("--dev-items", type=click.Path(dir_okay=False), help="File of dev item ids (one per line, or a dataset)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed for the dev split and bootstrap."),
    click.option("--option", "options", multiple=True, help="Method option METHOD.KEY=VALUE (repeatable)."),
    click.option("--extract", "extract", multiple=True,
                 help="Extraction step for generated text from lm-eval generate_until runs and LLaMA-Factory "
                      "files (repeatable, in order; a preset such as text or number, or a step such as "
                      "'regex:Answer: ([A-D])'). Default: text."),
]

PRED_HELP = ("PRED...: one or more inputs, each a predictions file, an lm-eval --output_path folder or "
             "samples_<task>_<ts>.jsonl, or a LLaMA-Factory generated_predictions.jsonl; NAME=PATH names "
             "the voter.")


def pred_argument(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One or more prediction inputs (see ensemble.predictions.foreign)."""
    fn.__doc__ = f"{fn.__doc__}\n\n{PRED_HELP}"
    return click.argument("pred", nargs=-1, required=True)(fn)


def with_fit_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    for flag in reversed(fit_flags):
        fn = flag(fn)
    return fn


def prepare(pred: Sequence[str], gold: str | None, methods: Sequence[str], weights: str | None, fit_on: str,
            dev_fraction: float, dev_items: str | None, seed: int, options: Sequence[str],
            extract: Sequence[str] = ()):
    """The protocol's split and methods for these flags (ensemble.evaluation.protocol)."""
    from ensemble.evaluation.protocol import choose_split, runnable_methods
    from ensemble.predictions.rows import load_predictions
    from ensemble.voting import METHODS

    steps = "text" if not extract else extract[0] if len(extract) == 1 else list(extract)
    m = load_predictions(list(pred), gold=gold, extract=steps)
    for name in methods:
        METHODS.get(name)  # unknown names fail before any work
    method_options = fit_options(parse_weights(weights), options)
    split = choose_split(m, fit_on=fit_on, fraction=dev_fraction, dev_items=dev_items, seed=seed)
    dev = None if split is None else split.dev_mask(m)
    chosen = runnable_methods(m, methods, method_options, dev, CLI_FIX)
    return m, split, chosen, method_options


def selected_line(report: dict[str, Any]) -> str:
    """One line naming the method best on dev and its eval accuracy (the number to quote)."""
    sel = report.get("selected_on_dev")
    if not sel:
        return "best method on dev: – (no dev split; pass --fit-on dev to choose a method on dev)"
    acc = sel.get("eval_accuracy")
    return (f"best method on dev: {sel['method']} (dev accuracy {sel['dev_accuracy']:.3f}; eval accuracy "
            + ("–" if acc is None else f"{acc:.3f}") + f" on {report['n_eval_items']} items)")


@main.command("eval")
@pred_argument
@with_fit_flags
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Bootstrap resamples for intervals.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout instead of tables.")
@handle_errors
def eval_cmd(pred: tuple[str, ...], gold: str | None, methods: tuple[str, ...], weights: str | None, fit_on: str,
             dev_fraction: float, dev_items: str | None, seed: int, options: tuple[str, ...],
             extract: tuple[str, ...], n_boot: int, as_json: bool) -> None:
    """Combine the votes in PRED... with each method and evaluate against gold."""
    from ensemble.evaluation.metrics import evaluate

    m, split, chosen, method_options = prepare(pred, gold, methods, weights, fit_on, dev_fraction, dev_items,
                                               seed, options, extract)
    report = evaluate(m, chosen, dev=split, method_options=method_options, n_boot=n_boot, seed=seed).to_dict()
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
        return
    from ensemble.cli.console import console, report_tables

    if m.meta.get("n_gold_without_votes"):
        console.print(f"[yellow]{m.meta['n_gold_without_votes']} gold items have no votes in {' '.join(pred)}; not evaluated[/]")
    for table in report_tables(report):
        console.print(table)
    console.print(selected_line(report))


@main.command("ablate")
@pred_argument
@with_fit_flags
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--cap", type=int, default=2000, show_default=True, help="Most voter subsets per k (sampled above).")
@handle_errors
def ablate_cmd(pred: tuple[str, ...], gold: str | None, methods: tuple[str, ...], weights: str | None,
               fit_on: str, dev_fraction: float, dev_items: str | None, seed: int, options: tuple[str, ...],
               extract: tuple[str, ...], out_dir: str, cap: int) -> None:
    """Accuracy against the number of voters: every subset (or a seeded sample), leave-one-out."""
    from ensemble.cli.console import ablation_table, console
    from ensemble.evaluation.ablation import ablate

    m, split, chosen, method_options = prepare(pred, gold, methods, weights, fit_on, dev_fraction, dev_items,
                                               seed, options, extract)
    if not m.has_gold().any():
        raise EnsembleError("vote ablate needs gold answers: pass --gold FILE")
    result = ablate(m, chosen, dev=split, method_options=method_options, cap=cap, seed=seed)
    paths = result.write(Path(out_dir))
    console.print(ablation_table(result.to_rows()))
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


@main.command("submit")
@pred_argument
@with_fit_flags
@click.option("--template", type=click.Path(dir_okay=False), help="Competition test file (nested format) to fill in.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="Output file (.csv/.jsonl).")
@click.option("--fallback", type=click.Choice(["none", "first", "random", "prior"]), default="none", show_default=True,
              help="How to fill items every voter abstained on (none = refuse and list them).")
@handle_errors
def submit_cmd(pred: tuple[str, ...], gold: str | None, methods: tuple[str, ...], weights: str | None,
               fit_on: str, dev_fraction: float, dev_items: str | None, seed: int, options: tuple[str, ...],
               extract: tuple[str, ...], template: str | None, out_file: str, fallback: str) -> None:
    """Final answers for every item, as id,answer or filled into a competition template."""
    from ensemble.evaluation.metrics import evaluate
    from ensemble.evaluation.submission import write_answers

    if len(methods) > 1:
        raise EnsembleError("vote submit takes one --method (the one whose answers are submitted)")
    m, split, chosen, method_options = prepare(pred, gold, methods or ("majority",), weights, fit_on,
                                               dev_fraction, dev_items, seed, options, extract)
    report = evaluate(m, chosen[:1], dev=split, method_options=method_options, n_boot=0)
    answers = report.answers(chosen[0])
    result = write_answers(answers, Path(out_file), template=Path(template) if template else None,
                           fallback=fallback, seed=seed)
    click.echo(f"wrote {result.n_items} answers to {result.out_path}"
               + (f" ({result.n_filled} filled by fallback '{fallback}')" if result.n_filled else ""))


@main.command("report")
@pred_argument
@with_fit_flags
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=True), help="The HTML file to write.")
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Bootstrap resamples for intervals.")
@click.option("--cap", type=int, default=50, show_default=True, help="Most voter subsets per k in the accuracy-vs-K plot.")
@handle_errors
def report_cmd(pred: tuple[str, ...], gold: str | None, methods: tuple[str, ...], weights: str | None,
               fit_on: str, dev_fraction: float, dev_items: str | None, seed: int, options: tuple[str, ...],
               extract: tuple[str, ...], out_file: str, n_boot: int, cap: int) -> None:
    """One self-contained HTML report of the votes in PRED...: tables and plots."""
    from ensemble.evaluation.html import html_report
    from ensemble.evaluation.report import evaluate

    m, split, chosen, method_options = prepare(pred, gold, methods, weights, fit_on, dev_fraction, dev_items,
                                               seed, options, extract)
    groups = [g or None for g in m.groups] if m.groups is not None and any(m.groups) else None
    report = evaluate(m, chosen, dev=split, method_options=method_options, n_boot=n_boot, seed=seed)
    path = html_report(m, report, out_file, dev=split, method_options=method_options, groups=groups, cap=cap,
                       seed=seed, sources=pred)
    click.echo(f"report: {path}")


from ensemble.cli import jobs  # noqa: F401  (registers run/train/serve/models/adapters/data/quickstart)
