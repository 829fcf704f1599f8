"""The config schema: what a YAML file in configs/ may say.

One file describes a whole experiment; each command reads the sections it needs:

    model   base model: bundled name ("smollm2"), local HF folder, or .gguf file
    out     run directory (adapters/, manifest.json, predictions.jsonl, reports)
    prompt  prompt template name (see ensemble.prompts) or a custom template mapping
    data    where items come from (files, or the generated bundled benchmark)
    voters  extra adapters trained elsewhere: name -> PEFT folder
    train   `vote train`: training settings and the variant grid
    run     `vote run`: engine, scoring mode, samples, voting methods, submission
    baseline  `vote quickstart`: the equal-budget single LoRA printed beside the ensemble

Relative paths are relative to the current directory (like LLaMA-Factory and torchtune).

Every name is resolved when the config is built (ensemble.config.checks): methods and
their options, extractor steps, engine, prompt templates, splits, submission method,
fallback, data format. A config never reads or writes a file; the checks that need the
filesystem (data files exist, fitted methods have dev items) run first thing in
`vote run` / `vote train` (ensemble.config.preflight).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ensemble.config import checks
from ensemble.config.loader import check

SPLIT_KINDS = ("full", "kfold", "bootstrap", "shard", "subsample")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Generate the bundled benchmark (ensemble.data.benchmark) into ``<out>/data``."""

    n_train: int = 1200
    n_dev: int = 300
    n_test: int = 300
    seed: int = 0
    kinds: tuple[str, ...] | None = None  # problem kinds to draw from; None = all registered

    def __post_init__(self) -> None:
        for name in ("n_train", "n_dev", "n_test"):
            check(getattr(self, name) >= 0, f"data.benchmark.{name}", getattr(self, name), "use 0 or more")
        if self.kinds is not None:
            from ensemble.data.benchmark import KINDS

            names = KINDS.names()
            check(len(self.kinds) > 0, "data.benchmark.kinds", list(self.kinds),
                  f"name at least one of {', '.join(names)}, or remove the field for all of them")
            for kind in self.kinds:
                check(kind in names, "data.benchmark.kinds", kind, f"valid kinds: {', '.join(names)}")

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of ``ensemble.data.benchmark.ensure_benchmark`` (the callers,
        `vote run` and `vote train`, generate the files; a config never does)."""
        return {"n_train": self.n_train, "n_dev": self.n_dev, "n_test": self.n_test, "seed": self.seed,
                "kinds": self.kinds}


@dataclass(frozen=True)
class DataConfig:
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    format: str = "auto"
    benchmark: BenchmarkConfig | None = None
    limit: int | None = None  # use only the first N problems of each split (quick trials)
    columns: dict[str, str] = field(default_factory=dict)  # our field -> the file's column (data/tables.py)

    def __post_init__(self) -> None:
        check(self.limit is None or self.limit > 0, "data.limit", self.limit, "use a positive number or remove it")
        checks.check_format(self.format)
        checks.check_columns(self.columns)


@dataclass(frozen=True)
class VariantConfig:
    """One LoRA variant, given explicitly (instead of, or on top of, the grid product)."""

    name: str | None = None
    seed: int = 0
    rank: int = 8
    alpha: float | None = None
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    split: str = "full"
    flavour: Literal["lora", "rslora", "dora", "alora"] = "lora"
    prompt: str | None = None  # template name; None = the config's prompt
    layers: str = "all"  # "all" or "top:N": LoRA on the top N decoder layers only
    bagging: Literal["none", "poisson"] = "none"  # shared batches: Poisson(1) weight per training row

    def __post_init__(self) -> None:
        check(self.rank > 0, "variant.rank", self.rank, "use a positive LoRA rank such as 8")
        check(split_kind(self.split) in SPLIT_KINDS, "variant.split", self.split,
              "use full, kfold:K, bootstrap, shard:K or subsample:F")
        if self.prompt is not None:
            checks.check_prompt_name(self.prompt, "variant.prompt")
        check(layers_ok(self.layers), "variant.layers", self.layers, LAYERS_FIX)


@dataclass(frozen=True)
class GridConfig:
    """The variant grid: the product seeds x ranks x target_modules x splits x flavours x prompts.

    ``splits``: ``full`` (all training data), ``kfold:K`` (variant i trains without
    fold i; K variants), ``bootstrap`` (a seeded resample with replacement: bagging),
    ``shard:K`` (K disjoint shards, variant i trains on shard i), ``subsample:F``
    (a seeded fraction F without replacement). A k-fold / shard split contributes K
    variants (one per fold) to the product; ``kfold:K:i`` / ``shard:K:i`` names one fold.
    """

    # Product fields; () = unset. With explicit `variants` and every product field unset,
    # only the explicit variants are trained; otherwise unset fields take the defaults
    # below (seed 0, rank 8, attention projections, full split, plain LoRA).
    seeds: tuple[int, ...] = ()
    ranks: tuple[int, ...] = ()
    alpha: float | None = None  # None: alpha = alpha_ratio * rank
    alpha_ratio: float = 2.0
    target_modules: tuple[tuple[str, ...], ...] = ()
    splits: tuple[str, ...] = ()
    flavours: tuple[Literal["lora", "rslora", "dora", "alora"], ...] = ()
    prompts: tuple[str, ...] = ()  # template names; () = the config's prompt
    layers: tuple[str, ...] = ()  # "all" / "top:N" per variant; () = all layers
    bagging: Literal["none", "poisson"] = "none"  # for every product variant (shared batches only)
    variants: tuple[VariantConfig, ...] = ()  # explicit variants, added after the product
    max_variants: int | None = None  # keep only the first N variants of the expansion

    def __post_init__(self) -> None:
        check(all(r > 0 for r in self.ranks), "train.grid.ranks", self.ranks, "use positive ranks")
        for s in self.splits:
            check(split_kind(s) in SPLIT_KINDS, "train.grid.splits", s,
                  "use full, kfold:K, bootstrap, shard:K or subsample:F")
        for p in self.prompts:
            checks.check_prompt_name(p, "train.grid.prompts")
        for layers in self.layers:
            check(layers_ok(layers), "train.grid.layers", layers, LAYERS_FIX)


@dataclass(frozen=True)
class TrainConfig:
    mode: Literal["cloze", "letter"] = "cloze"  # target: the option text (cloze) or its letter
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-4
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    lora_dropout: float = 0.05
    max_length: int = 256
    heldout_fraction: float = 0.1  # for splits without a natural held-out part
    eval_every: int | None = None  # steps between held-out evaluations; None = at the end only
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    trainer: Literal["loop", "hf"] = "loop"
    # Padded tokens per forward pass with gradients (the lean loop cuts a batch into passes
    # and sums their gradients: same update, activations for this many tokens at a time;
    # SmolLM2 keeps ~1.7 MB per token; an aLoRA suffix token, which attends to the whole
    # cached prompt, ~2.8 MB). 0 = the whole batch in one pass.
    max_batch_tokens: int = 384
    # Train the grid's variants in one process on shared batches (training.multi): the
    # part that does not depend on the voter (aLoRA: the prompt's KV cache; top:N: the
    # lower layers) runs once per batch; a variant's split becomes 0/1 (bootstrap:
    # count, bagging: poisson) weights on the rows of the shared batch.
    shared_batches: bool = False
    checkpoint_every: int = 10  # shared batches: steps between resumable checkpoints (0 = never)
    grid: GridConfig = field(default_factory=GridConfig)

    def __post_init__(self) -> None:
        check(self.epochs > 0, "train.epochs", self.epochs, "use a positive number of epochs")
        check(self.max_steps is None or self.max_steps > 0, "train.max_steps", self.max_steps, "use a positive step count")
        check(self.batch_size > 0, "train.batch_size", self.batch_size, "use 1 or more")
        check(self.grad_accum > 0, "train.grad_accum", self.grad_accum, "use 1 or more")
        check(0 < self.learning_rate < 1, "train.learning_rate", self.learning_rate, "use a value like 2e-4")
        check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "use a value in [0, 1)")
        check(0 < self.heldout_fraction < 1, "train.heldout_fraction", self.heldout_fraction, "use a value in (0, 1)")
        check(self.max_batch_tokens >= 0, "train.max_batch_tokens", self.max_batch_tokens,
              "use 0 (whole batches) or a token count such as 384")
        check(self.checkpoint_every >= 0, "train.checkpoint_every", self.checkpoint_every, "use 0 (never) or more")
        check(not self.shared_batches or self.trainer == "loop", "train.shared_batches", self.shared_batches,
              "shared batches run in the lean loop; set trainer: loop or shared_batches: false")
        bagged = [v.name or "a variant" for v in self.grid.variants if v.bagging == "poisson"]
        check(self.shared_batches or (self.grid.bagging == "none" and not bagged), "train.shared_batches", False,
              f"bagging: poisson ({'train.grid' if self.grid.bagging != 'none' else ', '.join(bagged)}) weights the "
              "rows of shared batches; set shared_batches: true, or use split: bootstrap for a resample per variant")


@dataclass(frozen=True)
class AdaptiveConfig:
    """`run.adaptive`: ask votes in rounds and stop per item once a stop rule says the
    answer is settled (ensemble.adaptive; rules in ensemble.voting.adaptive)."""

    rule: str = "dirichlet"  # a registered stop rule: none, exact, dirichlet, cisc, ...
    params: dict[str, Any] = field(default_factory=dict)  # the rule's parameters, e.g. {delta: 0.05}
    order: str = "dev_accuracy"  # dev_accuracy (best first, ties by name) | given (voters as resolved)
    weights: str = "none"  # none (each vote 1) | dev (the `weighted` method's log-odds weights fitted on dev)

    def __post_init__(self) -> None:
        checks.check_adaptive(self)


@dataclass(frozen=True)
class RunConfig:
    engine: str = "hf"
    mode: Literal["generate", "cloze", "letter"] = "cloze"
    samples: int = 1  # samples per voter per item (self-consistency when > 1, generate mode)
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int = 0
    stop: tuple[str, ...] = ()
    extractor: str | tuple[str, ...] = "mc"
    batch_size: int = 32
    dtype: Literal["float32", "bfloat16"] = "float32"
    engine_options: dict[str, Any] = field(default_factory=dict)
    include_base: bool = False  # also ask the plain base model, as voter "base"
    splits: tuple[str, ...] = ("dev", "test")  # which data splits to answer
    methods: tuple[str, ...] = ("majority", "weighted", "select", "stack", "confidence", "dawid_skene")
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights_from: Literal["dev", "manifest"] = "dev"  # where `weighted` gets its weights
    submission: str | None = None  # write the chosen method's answers for the test split here
    submission_method: str = "majority"
    fallback: str = "none"
    probe: bool = True  # warn when an adapter's outputs equal the base model's
    adaptive: AdaptiveConfig | None = None  # ask in rounds, stop per item once decided (None: ask everyone)

    def __post_init__(self) -> None:
        check(self.samples >= 1, "run.samples", self.samples, "use 1 or more")
        check(self.temperature >= 0, "run.temperature", self.temperature, "use 0 (greedy) or more")
        check(0 < self.top_p <= 1, "run.top_p", self.top_p, "use a value in (0, 1]")
        check(self.batch_size >= 1, "run.batch_size", self.batch_size, "use 1 or more")
        check(self.samples == 1 or self.mode == "generate", "run.samples", self.samples,
              "several samples need mode: generate (choice scoring is deterministic)")
        check(self.samples == 1 or self.temperature > 0, "run.samples", self.samples,
              "several samples need temperature > 0, or they are identical")
        checks.check_engine(self.engine)
        checks.check_extractor(self.extractor)
        checks.check_splits(self.splits)
        checks.check_methods(self.methods)
        checks.check_method_options(self.method_options)
        checks.check_submission(self)
        checks.check_adaptive_splits(self)


@dataclass(frozen=True)
class BaselineConfig:
    """`vote quickstart`'s equal-budget single LoRA (``ensemble.quickstart``): one plain LoRA
    on every training row, with the train section's recipe and its own ``max_steps``, set so
    that its training + scoring time matches the ensemble's. Scored on the test split."""

    max_steps: int
    name: str = "single-lora"
    seed: int = 0
    rank: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_batch_tokens: int | None = None  # memory knob (same update); None: the train section's

    def __post_init__(self) -> None:
        check(self.max_steps > 0, "baseline.max_steps", self.max_steps, "use a positive step count")
        check(self.max_batch_tokens is None or self.max_batch_tokens >= 0, "baseline.max_batch_tokens",
              self.max_batch_tokens, "use 0 (whole batches), a token count such as 384, or leave it out")
        check(self.rank > 0, "baseline.rank", self.rank, "use a positive LoRA rank such as 16")


@dataclass(frozen=True)
class Config:
    model: str = "smollm2"
    out: str = "runs/default"
    prompt: str | dict[str, Any] = "mc_auto"
    data: DataConfig = field(default_factory=DataConfig)
    voters: dict[str, str] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    baseline: BaselineConfig | None = None  # `vote quickstart`: the equal-budget single LoRA
    source: str = ""  # set by load_config: the file this came from

    def __post_init__(self) -> None:
        checks.check_prompt(self.prompt)
        # A config that names data for `vote run` has its run section checked against it
        # now; a training-only config (data.train alone) gets this check from `vote run`'s
        # pre-flight instead, so `vote train` can load it.
        if self.data.dev is not None or self.data.test is not None or self.data.benchmark is not None:
            checks.check_run_data(self.data, self.run)


LAYERS_FIX = "use all, or top:N with N a positive number of decoder layers"


def layers_ok(layers: str) -> bool:
    """'all' or 'top:N' (N >= 1; checked against the model's depth when training starts)."""
    kind, _, n = str(layers).partition(":")
    return layers == "all" or (kind == "top" and n.isdigit() and int(n) > 0)


def split_kind(split: str) -> str:
    """'kfold:5' -> 'kfold'."""
    return split.partition(":")[0]
