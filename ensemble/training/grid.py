"""The variant grid: which LoRA variants `vote train` trains over one frozen base.

``expand_grid(grid, default_prompt)`` spells out the product

    seeds x ranks x target_modules x splits x flavours x layers x prompts

in that nesting order (the last factor varies fastest), where a ``kfold:K`` or
``shard:K`` split contributes K variants (fold / shard 0..K-1), then appends the
explicit ``grid.variants``, then keeps the first ``max_variants``. Each variant
gets a readable, unique name such as ``s0-r8-attn-kfold5.2-lora`` (seed 0, rank 8,
attention projections, fold 2 of 5, plain LoRA); it names the adapter folder and
the voter. Top-layer variants add ``-topN``, Poisson-bagged ones ``-pois``.

Voter kinds (``flavour``, ``layers``; see ``training.kinds``): ``alora`` is an
activated LoRA (active from the answer's invocation tokens on), ``layers: top:N``
puts the LoRA on the top N decoder layers only. Both leave a part of every forward
pass to the base model, which shared batches (``training.multi``) compute once.

Split syntax: ``full``, ``kfold:K``, ``kfold:K:i`` (only fold i), ``bootstrap``,
``shard:K``, ``shard:K:i``, ``subsample:F`` (0 < F < 1).
"""
from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ensemble.config.loader import ConfigError
from ensemble.config.schema import GridConfig, VariantConfig
from ensemble.errors import EnsembleError

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
# Short names of common target-module sets, for variant names.
_MODULE_NAMES = {frozenset(ATTN): "attn", frozenset(MLP): "mlp", frozenset(ATTN + MLP): "all",
                 frozenset(("all-linear",)): "linear"}
_SPLIT_FIX = "use full, kfold:K, kfold:K:i, bootstrap, shard:K, shard:K:i or subsample:F (0 < F < 1)"


@dataclass(frozen=True)
class Variant:
    """One LoRA variant: everything that makes its adapter differ from its siblings.

    split        the split kind: full | kfold | bootstrap | shard | subsample
    split_param  K for kfold / shard, F for subsample, None otherwise
    split_index  the fold / shard this variant trains for (0 otherwise)
    prompt       template name; None = the config's own prompt
    """

    name: str
    seed: int
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    split: str
    split_param: int | float | None
    split_index: int
    flavour: str
    prompt: str | None
    layers: str = "all"
    bagging: str = "none"

    @property
    def split_spec(self) -> str:
        """Back to the config syntax: 'kfold:5:2', 'subsample:0.5', 'full'."""
        if self.split in ("kfold", "shard"):
            return f"{self.split}:{self.split_param}:{self.split_index}"
        if self.split == "subsample":
            return f"subsample:{self.split_param:g}"
        return self.split

    def settings(self) -> dict[str, Any]:
        """The variant's settings as plain JSON (the name excluded: it is the key)."""
        out = asdict(self)
        del out["name"]
        out["target_modules"] = list(self.target_modules)
        # Fields added later are left out at their defaults: older runs keep their hashes.
        for key, default in (("layers", "all"), ("bagging", "none")):
            if out[key] == default:
                del out[key]
        return out

    def settings_hash(self, extra: Mapping[str, Any] | None = None) -> str:
        """Stable hash of the settings (plus ``extra``: recipe, data...) for resume checks."""
        return stable_hash({"variant": self.settings(), "extra": dict(extra or {})})


def stable_hash(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys), first 16 hex digits."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_split(text: str, field: str = "train.grid.splits") -> tuple[str, int | float | None, int | None]:
    """'kfold:5' -> ('kfold', 5, None); 'kfold:5:2' -> ('kfold', 5, 2); 'subsample:0.5' -> (.., 0.5, None)."""
    kind, *params = str(text).split(":")
    try:
        if kind in ("full", "bootstrap") and not params:
            return kind, None, None
        if kind in ("kfold", "shard") and len(params) in (1, 2):
            k = int(params[0])
            index = int(params[1]) if len(params) == 2 else None
            if k >= 2 and (index is None or 0 <= index < k):
                return kind, k, index
        if kind == "subsample" and len(params) == 1:
            frac = float(params[0])
            if 0 < frac < 1:
                return kind, frac, None
    except ValueError:
        pass
    raise ConfigError(f"field '{field}' is {text!r}; {_SPLIT_FIX}")


def modules_name(modules: tuple[str, ...]) -> str:
    """('q_proj','k_proj','v_proj','o_proj') -> 'attn'; ('q_proj','v_proj') -> 'qv'."""
    known = _MODULE_NAMES.get(frozenset(modules))
    if known:
        return known
    short = [m.removesuffix("_proj") for m in modules]
    return "".join(short) if all(len(s) == 1 for s in short) else "_".join(short)


def split_name(kind: str, param: float | None, index: int) -> str:
    if kind in ("kfold", "shard"):
        return f"{kind}{param}.{index}"
    if kind == "subsample":
        return f"sub{param:g}"
    return "boot" if kind == "bootstrap" else kind


def variant_name(seed: int, rank: int, modules: tuple[str, ...], kind: str,
                 param: float | None, index: int, flavour: str, prompt: str | None,
                 layers: str = "all", bagging: str = "none") -> str:
    parts = [f"s{seed}", f"r{rank}", modules_name(modules), split_name(kind, param, index), flavour]
    if layers != "all":
        parts.append(layers.replace(":", ""))  # top:4 -> top4
    if bagging != "none":
        parts.append("pois")
    if prompt is not None:
        parts.append(prompt)
    return "-".join(parts)


def _split_variants(split: str, field: str) -> list[tuple[str, int | float | None, int]]:
    """One split setting -> its (kind, param, index) members: K of them for kfold:K / shard:K."""
    kind, param, index = parse_split(split, field)
    if kind in ("kfold", "shard") and index is None:
        return [(kind, param, i) for i in range(int(param))]  # type: ignore[arg-type]
    return [(kind, param, index or 0)]


DEFAULT_SEEDS, DEFAULT_RANKS, DEFAULT_SPLITS, DEFAULT_FLAVOURS = (0,), (8,), ("full",), ("lora",)
DEFAULT_MODULES = (("q_proj", "k_proj", "v_proj", "o_proj"),)


def expand_grid(grid: GridConfig, default_prompt: str | Mapping[str, Any] | None = None) -> list[Variant]:
    """Spell out the grid product, then the explicit variants, then truncate to max_variants.

    ``default_prompt`` is the config's prompt; a variant whose prompt is the default
    stores ``prompt=None`` (a custom template mapping has no name to store).
    """
    default = default_prompt if isinstance(default_prompt, str) else None
    # The prompt goes into names only when the grid varies it.
    prompts: list[str | None] = list(grid.prompts) or [None]
    product_set = any((grid.seeds, grid.ranks, grid.target_modules, grid.splits, grid.flavours, grid.layers,
                       grid.prompts))
    use_product = product_set or not grid.variants  # explicit variants alone, unless the product is asked for
    splits = [m for s in (grid.splits or DEFAULT_SPLITS) for m in _split_variants(s, "train.grid.splits")]
    out: list[Variant] = []
    for seed, rank, modules, (kind, param, index), flavour, layers, prompt in itertools.product(
            grid.seeds or DEFAULT_SEEDS, grid.ranks or DEFAULT_RANKS, grid.target_modules or DEFAULT_MODULES,
            splits, grid.flavours or DEFAULT_FLAVOURS, grid.layers or ("all",), prompts) if use_product else ():
        alpha = grid.alpha if grid.alpha is not None else grid.alpha_ratio * rank
        name = variant_name(seed, rank, tuple(modules), kind, param, index, flavour, prompt, layers, grid.bagging)
        out.append(Variant(name, seed, rank, float(alpha), tuple(modules), kind, param, index, flavour,
                           None if prompt == default else prompt, layers, grid.bagging))
    for i, v in enumerate(grid.variants):
        out.extend(_explicit(v, grid, i, default))
    if grid.max_variants is not None:
        out = out[: grid.max_variants]
    _check_unique(out)
    return out


def _explicit(v: VariantConfig, grid: GridConfig, i: int, default: str | None) -> list[Variant]:
    """An explicit variant; ``split: kfold:K`` without an index gives K variants (name.0 ...)."""
    alpha = v.alpha if v.alpha is not None else grid.alpha if grid.alpha is not None else grid.alpha_ratio * v.rank
    members = _split_variants(v.split, f"train.grid.variants[{i}].split")
    out = []
    for kind, param, index in members:
        if v.name is None:
            name = variant_name(v.seed, v.rank, v.target_modules, kind, param, index, v.flavour, v.prompt,
                                v.layers, v.bagging)
        else:
            name = f"{v.name}.{index}" if len(members) > 1 else v.name
        prompt = None if v.prompt == default else v.prompt
        out.append(Variant(name, v.seed, v.rank, float(alpha), tuple(v.target_modules), kind, param, index,
                           v.flavour, prompt, v.layers, v.bagging))
    return out


def _check_unique(variants: list[Variant]) -> None:
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise EnsembleError(
                f"train.grid: two variants are named '{v.name}'; give the explicit variant a distinct "
                f"'name:' or remove the duplicate setting")
        if not v.name or "/" in v.name or v.name.startswith("."):
            raise EnsembleError(f"train.grid: variant name {v.name!r} cannot be a folder name; "
                                "use letters, digits, '-', '_' or '.'")
        seen.add(v.name)
