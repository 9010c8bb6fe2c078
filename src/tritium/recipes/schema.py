"""The typed recipe: a quantize job's method, grid, evaluation and calibration settings as dataclasses.

Each dataclass checks its own fields when it is built (``__post_init__``), so a recipe made in Python
(``Recipe(method="rtn", grid=GridSpec(bits=2, group=128))``) is checked as a file is: the type and range
of every setting of the grid, evaluation and calibration, and the grid's keys against its kind. A wrong
value is refused, never coerced (``symmetric: "no"`` is not a boolean) nor replaced by a default.
:meth:`Recipe.from_mapping` adds what only a file can get wrong: unknown keys (refused with the closest
known key suggested), a section that is not a mapping, and a missing ``method``, which a file must name.
What a file leaves out comes from the defaults: each section key by key, the grid whole (a default bit
width means nothing to a ternary grid).

:meth:`Recipe.with_overrides` applies a job's options (the CLI's flags) to the same object and checks
the result the same way, so a bad flag value is refused as a bad file value is; the error names the flag.
:meth:`Recipe.to_dict` gives the plain mapping the jobs, methods and trainer consume.

The top-level ``act_*`` keys (``ACTIVATION_KEYS``) quantize the input of every quantized linear too; unset, the
recipe quantizes weights only and its mapping carries none of them. :meth:`Recipe.activation_grid` gives the grid.

``method_args`` and ``e2e`` stay mappings: their options belong to each method's config (and the e2e
trainer's), which check them when the config is built (``methods.config_from_dict``, ``train.e2e``).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields

from ..utils.errors import TritiumError

# e2e: end-to-end scale tuning after PTQ (tritium.train.e2e); absent by default
RECIPE_KEYS = {"description", "method", "grid", "method_args", "eval", "calib", "rotate", "e2e", "act_bits", "act_group",
               "act_symmetric", "act_clip_ratio", "act_clip_search", "online_rotation", "kv_bits"}
# Rotations applied at run time (QuaRot R3/R4) and a fake-quantized KV cache (tritium.models.online_rotation);
# top-level keys, unset (None) for none.
ONLINE_KEYS = ("online_rotation", "kv_bits")
# Weight + activation quantization: the input of every quantized linear is quantized on the fly, per token
# (tritium.quant.activations). Top-level recipe keys, all unset (None) for weights only.
ACTIVATION_KEYS = ("act_bits", "act_group", "act_symmetric", "act_clip_ratio", "act_clip_search")
# The clipping ratios ``act_clip_search: true`` tries on each linear (a list in the recipe chooses others).
DEFAULT_ACT_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8)
GRID_KEYS = {"uniform": {"kind", "bits", "group", "symmetric", "ragged_groups"},
             "ternary": {"kind", "variant", "group", "ragged_groups"},
             "gguf": {"kind", "type"}}  # a llama.cpp block format, e.g. {kind: gguf, type: q4_0}
EVAL_KEYS = {"datasets", "seqlen", "limit", "zeroshot", "zeroshot_limit", "batch_size", "scorers"}
CALIB_KEYS = {"source", "samples", "seqlen", "seed"}
# the sections whose keys an override may set one by one ("calib.samples")
SECTIONS = ("grid", "eval", "calib", "method_args", "e2e")


class RecipeError(TritiumError, ValueError):
    """A recipe that cannot be found or read, or a setting of one (from its file or a job's option) that is wrong."""


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class _Where:
    """Where the values being checked come from: ``text`` opens a file value's error ("recipe r.yaml");
    ``flags`` names the option that set a field ("eval.batch_size" -> "--batch-size"), which that field's error
    names instead; ``python``: the values are a dataclass's fields set in Python code ("GridSpec")."""

    text: str
    flags: Mapping[str, str] = field(default_factory=dict)
    python: bool = False

    def refuse(self, path: str, requirement: str, value, hint: str = "", fix: str = ""):
        """``hint`` follows a file value's error (it speaks of YAML), ``fix`` a flag's or a field's."""
        flag = self.flags.get(path)
        if flag:
            raise RecipeError(f"{flag} {value!r} is not {requirement}" + (f": {fix}" if fix else ""))
        if self.python:
            raise RecipeError(f"{self.text}: {path} must be {requirement}, not {value!r}" + (f": {fix}" if fix else ""))
        raise RecipeError(f"{self.text}: {path.replace('.', ' ')} must be {requirement}, not {value!r}{hint}")


# The origin of the values being built: set by from_mapping (a file, or a job's flags) around the dataclass
# it builds, so that __post_init__ words its errors for that origin; unset, the fields came from Python code.
_BUILDING: ContextVar[_Where | None] = ContextVar("tritium_recipe_where", default=None)


@contextmanager
def _building(where: _Where) -> Iterator[None]:
    token = _BUILDING.set(where)
    try:
        yield
    finally:
        _BUILDING.reset(token)


def _where_for(spec) -> _Where:
    return _BUILDING.get() or _Where(type(spec).__name__, python=True)


def _suggest(key, known) -> str:
    text = str(key)
    # a known key that the text extends or cuts short ("calibration" -> "calib", "method_arg" -> "method_args"),
    # the longest shared, before the merely similar ones ("act_clip_ratio")
    prefixed = sorted((k for k in known if text.startswith(k) or k.startswith(text)),
                      key=lambda k: (-min(len(k), len(text)), k))
    close = prefixed[:1] or difflib.get_close_matches(text, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(mapping: Mapping, known: set, where: str, flags: Mapping[str, str] | None = None,
                section: str = "") -> None:
    for key in mapping:
        if key in known:
            continue
        flag = (flags or {}).get(f"{section}.{key}" if section else key)
        if flag:
            raise RecipeError(f"{flag} does not apply: {where} has no setting {key!r} (its settings are "
                              f"{', '.join(sorted(known))}); leave {flag} out")
        raise RecipeError(f"{where} has an unknown key {key!r}{_suggest(key, known)}; the keys are "
                          f"{', '.join(sorted(known))}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value, path: str, where: _Where, optional: bool = False):
    if (value is None and optional) or (_is_int(value) and value >= 1):
        return value
    where.refuse(path, "a positive whole number", value, " (or null for no limit)" if optional else "",
                 "pass 1 or more" + (", or leave it out for no limit" if optional else ""))


def _boolean(value, path: str, where: _Where):
    if isinstance(value, bool):
        return value
    where.refuse(path, "true or false", value, ": write it unquoted (YAML reads \"no\" in quotes as text)",
                 "pass True or False")


def _names(value, path: str, where: _Where):
    """A list of names (or None), kept as a tuple so that the frozen section stays unchanged."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        where.refuse(path, "a list of names, e.g. [wikitext2]", value)
    return tuple(value)


def _mapping_or_none(value, key: str, where: _Where) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise RecipeError(f"{where.text}: {key} must be a mapping of settings, not {value!r}")


def _text(value, path: str, where: _Where, requirement: str):
    if isinstance(value, str):
        return value
    where.refuse(path, requirement, value)


def _whole_number(value, path: str, where: _Where, requirement: str = "a whole number"):
    if _is_int(value):
        return value
    where.refuse(path, requirement, value)


def _group(value, path: str, where: _Where):
    if value in ("channel", "tensor") or (_is_int(value) and value >= 1):
        return value
    where.refuse(path, "a positive whole number, 'channel' or 'tensor'", value)


def _instance(value, cls, path: str, where: _Where, requirement: str):
    if isinstance(value, cls):
        return value
    where.refuse(path, requirement, value)


def _section_settings(settings, section: str, known: set, where: _Where) -> Mapping:
    """A section's settings ({} for none), refused unless a mapping of known keys."""
    _mapping_or_none(settings, section, where)
    settings = settings or {}
    _check_keys(settings, known, f"{where.text}: {section}", where.flags, section)
    return settings


def _listed(value):
    """A section value as the plain mapping holds it: tuples of names become lists again."""
    return list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class GridSpec:
    """The recipe's grid. ``None`` is a setting the recipe leaves to the grid's own default
    (``tritium.quant.grids``); a file cannot write ``null`` for one."""

    kind: str = "uniform"
    bits: int | None = None  # uniform only
    group: int | str | None = None  # a positive size, "channel" or "tensor"
    symmetric: bool | None = None  # uniform only
    variant: str | None = None  # ternary only: absmean, twn or dlt
    ragged_groups: bool | None = None
    type: str | None = None  # gguf only: the llama.cpp block format (q4_0, ..., q2_k, ..., q6_k, tq1_0, tq2_0)

    def __post_init__(self):
        where = _where_for(self)
        _check_grid_kind(self.kind, where)
        _check_keys({f.name: None for f in fields(self) if getattr(self, f.name) is not None}, GRID_KEYS[self.kind],
                    f"{where.text}: the {self.kind} grid", where.flags, "grid")
        for key, check in _GRID_CHECKS.items():
            if getattr(self, key) is not None:
                check(getattr(self, key), f"grid.{key}", where)
        self._check_range(where.text)

    @classmethod
    def from_mapping(cls, grid, where: str | _Where, flags: Mapping[str, str] | None = None) -> GridSpec:
        where = where if isinstance(where, _Where) else _Where(where, flags or {})
        if not isinstance(grid, Mapping):
            raise RecipeError(f"{where.text}: grid must be a mapping such as {{kind: uniform, bits: 2, group: 128}}, "
                              f"not {grid!r}" + (f": write `grid: {{kind: {grid}}}`" if isinstance(grid, str) else ""))
        kind = grid.get("kind", "uniform")
        _check_grid_kind(kind, where)
        _check_keys(grid, GRID_KEYS[kind], f"{where.text}: the {kind} grid", where.flags, "grid")
        for key, value in grid.items():
            if value is None and key in _GRID_CHECKS:  # a file's null would silently mean the grid's default
                _GRID_CHECKS[key](value, f"grid.{key}", where)
        with _building(where):
            return cls(**dict(grid))

    def _check_range(self, where: str) -> None:
        """The values the grid itself refuses (bits it has no codes for, an unknown variant), said here."""
        from ..quant.grids import QuantConfigError

        try:
            self.to_grid()
        except QuantConfigError as err:
            raise RecipeError(f"{where}: grid: {err}") from None

    def to_dict(self) -> dict:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in fields(self)
                                      if f.name != "kind" and getattr(self, f.name) is not None}}

    def to_grid(self):
        """The grid object (``tritium.quant.grids``) this spec describes."""
        from ..quant.grids import grid_from_dict

        return grid_from_dict(self.to_dict())


def _check_grid_kind(kind, where: _Where) -> None:
    if kind in GRID_KEYS:
        return
    if where.flags.get("grid.kind"):
        raise RecipeError(f"{where.flags['grid.kind']} {kind!r} is not a grid kind: use {', '.join(GRID_KEYS)}")
    raise RecipeError(f"{where.text}: grid kind {kind!r} is unknown{_suggest(kind, GRID_KEYS)}: use "
                      f"{', '.join(GRID_KEYS)}")


# The type of each grid setting besides kind; its range is the grid's own (GridSpec._check_range).
_GRID_CHECKS = {
    "bits": lambda value, path, where: _whole_number(value, path, where, "a whole number (2, 3, 4, 8)"),
    "group": _group,
    "symmetric": _boolean,
    "ragged_groups": _boolean,
    "variant": lambda value, path, where: _text(value, path, where, "absmean, twn or dlt"),
    "type": lambda value, path, where: _text(value, path, where, "a GGUF block type such as q4_0"),
}


@dataclass(frozen=True)
class EvalSpec:
    """What the float and the quantized model are evaluated on."""

    datasets: tuple[str, ...] | None = ("wikitext2",)
    seqlen: int = 2048
    limit: int | None = None  # perplexity chunks; None: all of them
    zeroshot: tuple[str, ...] | None = ()
    zeroshot_limit: int | None = None  # documents of each task; None: all of them
    batch_size: int = 1
    scorers: tuple[str, ...] | None = None  # None: tritium's own (eval.harness)

    def __post_init__(self):
        where = _where_for(self)
        for key in ("datasets", "zeroshot", "scorers"):  # a list of names is kept as a tuple: the spec is frozen
            object.__setattr__(self, key, _names(getattr(self, key), f"eval.{key}", where))
        for key, optional in [("seqlen", False), ("batch_size", False), ("limit", True), ("zeroshot_limit", True)]:
            _positive_int(getattr(self, key), f"eval.{key}", where, optional)

    @classmethod
    def from_mapping(cls, settings, where: str | _Where, flags: Mapping[str, str] | None = None) -> EvalSpec:
        """The settings of ``settings`` over the defaults."""
        where = where if isinstance(where, _Where) else _Where(where, flags or {})
        settings = _section_settings(settings, "eval", EVAL_KEYS, where)
        with _building(where):
            return cls(**dict(settings))

    def to_dict(self) -> dict:
        return {f.name: _listed(getattr(self, f.name)) for f in fields(self)
                if f.name != "scorers" or self.scorers is not None}


@dataclass(frozen=True)
class CalibSpec:
    """The calibration text of a calibrated method (and of a bit budget's sensitivity measurement)."""

    source: str = "wikitext2-valid"  # a data set split or a file; never a test split
    samples: int = 128
    seqlen: int = 2048
    seed: int = 0

    def __post_init__(self):
        where = _where_for(self)
        _text(self.source, "calib.source", where, "a data set split or a file")
        for key in ("samples", "seqlen"):
            _positive_int(getattr(self, key), f"calib.{key}", where)
        _whole_number(self.seed, "calib.seed", where)

    @classmethod
    def from_mapping(cls, settings, where: str | _Where, flags: Mapping[str, str] | None = None) -> CalibSpec:
        """The settings of ``settings`` over the defaults."""
        where = where if isinstance(where, _Where) else _Where(where, flags or {})
        settings = _section_settings(settings, "calib", CALIB_KEYS, where)
        with _building(where):
            return cls(**dict(settings))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class Recipe:
    """A quantize job's recipe; ``Recipe()`` is the defaults (RTN, W4 g128), which a job without a recipe runs."""

    method: str = "rtn"
    grid: GridSpec = field(default_factory=lambda: GridSpec(kind="uniform", bits=4, group=128))
    method_args: Mapping = field(default_factory=dict)  # the method's own options (its config checks them)
    # false, true, or {seed, kind, heads}: fold norms and rotate the weights first (tritium.models.rotation)
    rotate: bool | Mapping | None = False
    eval: EvalSpec = field(default_factory=EvalSpec)
    calib: CalibSpec = field(default_factory=CalibSpec)
    e2e: Mapping | None = None  # end-to-end scale tuning after PTQ (tritium.train.e2e checks its options)
    description: str | None = ""
    name: str | None = None  # the file's stem; None for the defaults
    # Activation quantization of every quantized linear's input (ACTIVATION_KEYS); None: weights only.
    act_bits: int | None = None  # 4, 6 or 8
    act_group: int | str | None = None  # "token" (one scale per token, the default) or a group size
    act_symmetric: bool | None = None  # default true
    act_clip_ratio: float | None = None  # in (0, 1]; default 1.0 (no clipping)
    # true: search each linear's clipping ratio among DEFAULT_ACT_CLIP_RATIOS on calibration data; or a list
    act_clip_search: bool | tuple[float, ...] | None = None
    # Online Hadamards (down_proj: R4, qk: R3 after RoPE, all: both) and the KV cache's bits (4 or 8); None: off.
    online_rotation: str | None = None
    kv_bits: int | None = None

    def __post_init__(self):
        where = _where_for(self)
        if not isinstance(self.method, str) or not self.method:
            where.refuse("method", "a method name such as rtn or gptq", self.method)
        _instance(self.grid, GridSpec, "grid", where, "a GridSpec such as GridSpec(kind='uniform', bits=2, group=128)")
        _instance(self.eval, EvalSpec, "eval", where, "an EvalSpec such as EvalSpec(datasets=('wikitext2',))")
        _instance(self.calib, CalibSpec, "calib", where, "a CalibSpec such as CalibSpec(samples=128)")
        _instance(self.method_args, Mapping, "method_args", where, "a mapping of the method's settings")
        _mapping_or_none(self.e2e, "e2e", where)
        if self.rotate is not None and not isinstance(self.rotate, (bool, Mapping)):
            where.refuse("rotate", "true, false or a mapping {seed, kind, heads}", self.rotate)
        if self.description is not None and not isinstance(self.description, str):
            where.refuse("description", "text", self.description)
        _check_activation_settings(self, where)
        _check_online_settings(self, where)

    @classmethod
    def from_mapping(cls, mapping, where: str, *, name: str | None = None,
                     flags: Mapping[str, str] | None = None) -> Recipe:
        """The recipe a file's ``mapping`` describes, over the defaults; ``where`` opens each error
        ("recipe r.yaml"). ``flags``: see :meth:`with_overrides`."""
        at = _Where(where, flags or {})
        if not isinstance(mapping, Mapping):
            raise RecipeError(f"{where} must be a mapping of {sorted(RECIPE_KEYS)}")
        _check_keys(mapping, RECIPE_KEYS, where, at.flags)
        if "method" not in mapping:
            raise RecipeError(f"{where} names no method: add e.g. `method: rtn` (or gptq, awq, tesseraq, dlt)")
        for key in ("method_args", "eval", "calib", "e2e"):
            _mapping_or_none(mapping.get(key), key, at)
        with _building(at):
            return cls(method=mapping["method"],
                       grid=GridSpec.from_mapping(mapping["grid"], at) if "grid" in mapping else cls().grid,
                       method_args=copy.deepcopy(dict(mapping.get("method_args") or {})),
                       rotate=copy.deepcopy(mapping.get("rotate", False)),
                       eval=EvalSpec.from_mapping(mapping.get("eval"), at),
                       calib=CalibSpec.from_mapping(mapping.get("calib"), at),
                       e2e=copy.deepcopy(dict(mapping["e2e"])) if mapping.get("e2e") is not None else None,
                       description=mapping.get("description", ""), name=name,
                       **{key: copy.deepcopy(mapping[key]) for key in ACTIVATION_KEYS + ONLINE_KEYS if key in mapping})

    def to_dict(self) -> dict:
        """The plain mapping the jobs consume (a fresh copy: changing it leaves the recipe as it is)."""
        out = {"description": self.description, "method": self.method, "grid": self.grid.to_dict(),
               "method_args": copy.deepcopy(dict(self.method_args)), "rotate": copy.deepcopy(self.rotate),
               "eval": self.eval.to_dict(), "calib": self.calib.to_dict()}
        if self.e2e is not None:
            out["e2e"] = copy.deepcopy(dict(self.e2e))
        for key in ACTIVATION_KEYS + ONLINE_KEYS:  # only those set: other recipes' mappings are as they always were
            if getattr(self, key) is not None:
                out[key] = _listed(getattr(self, key))
        if self.name is not None:
            out["name"] = self.name
        return out

    def activation_grid(self):
        """The :class:`~tritium.quant.activations.ActivationGrid` of every quantized linear's input, or None
        (weights only). A per-linear clipping search (``act_clip_search``) starts from this grid."""
        return activation_grid_of(self.to_dict())

    def activation_clip_candidates(self) -> tuple[float, ...] | None:
        """The clipping ratios searched on each linear (``act_clip_search``), or None for no search."""
        return activation_clip_candidates_of(self.to_dict())

    def with_overrides(self, changes: Mapping[str, object], flags: Mapping[str, str] | None = None) -> Recipe:
        """This recipe with ``changes`` applied and checked as a file is: each key a recipe key ("method",
        "rotate") or a section's ("grid.bits", "calib.samples", "method_args.skip"), deeper in a section's
        mappings too ("method_args.train.tokens"), e.g. ``recipe.with_overrides({"grid.bits": 2,
        "calib.samples": 16})``. A new ``grid.kind`` starts a grid of that kind that keeps only the group.
        ``flags``: the option that set each key ("grid.bits" -> "--bits"); an error about that setting names
        the option and its value."""
        flags = dict(flags or {})
        data = self.to_dict()  # a fresh copy, changed in place below
        data.pop("name", None)
        for key, value in changes.items():
            section, *path = key.split(".")
            if not path:
                data[section] = value
                continue
            if section not in SECTIONS:
                raise RecipeError(f"cannot override {key!r}: {section!r} is not a section of a recipe; the sections "
                                  f"are {', '.join(SECTIONS)}")
            current = dict(data.get(section) or {})
            if (section, path) == ("grid", ["kind"]) and value != current.get("kind"):
                keeps_group = "group" in current and "group" in GRID_KEYS.get(value, ())  # a GGUF type fixes its own
                current = {"group": current["group"]} if keeps_group else {}
            data[section] = current
            for part in path[:-1]:
                inner = current.get(part)
                if inner is not None and not isinstance(inner, Mapping):
                    raise RecipeError(f"cannot override {key!r}: {part!r} holds {inner!r}, not a mapping of settings")
                current[part] = dict(inner or {})
                current = current[part]
            current[path[-1]] = value
        shown = " ".join(f"{flag} {changes[key]!r}" for key, flag in flags.items() if key in changes)
        where = f"recipe {self.name}" if self.name else "the default recipe"
        return Recipe.from_mapping(data, f"{where} with {shown or 'its overrides'}", name=self.name, flags=flags)

    def check_format(self, save_format: str) -> None:
        """Refuse, before any work, a grid (or a linear's grid of ``method_args.grid_overrides``) that
        ``save_format`` cannot store."""
        from ..quant.grids import grid_from_dict

        overrides = self.method_args.get("grid_overrides") or {}
        check_save_format(save_format, self.grid.to_grid(),
                          {name: grid_from_dict(g) if isinstance(g, Mapping) else g for name, g in overrides.items()})


def check_save_format(save_format: str, grid, overrides=None) -> None:
    """Refuse, before any work, a grid that the packed format cannot store (6-bit has no layout)."""
    from ..pack.layouts import PackError, uniform_radix

    if save_format != "packed":
        return
    for each in [grid, *(overrides or {}).values()]:
        bits = getattr(each, "bits", None)
        if getattr(each, "kind", "uniform") == "uniform" and bits is not None:
            try:
                uniform_radix(bits)
            except PackError as err:
                raise PackError(f"{err}; to save this grid anyway, pass --format fake (fake-quant float "
                                "weights)") from None


# --------------------------------------------------------------------------- activation quantization


def _check_activation_settings(recipe: Recipe, where: _Where) -> None:
    """The activation keys' types and ranges, and that none is set without ``act_bits`` (it would mean nothing)."""
    if recipe.act_bits is None:
        stray = [key for key in ACTIVATION_KEYS[1:] if getattr(recipe, key) is not None
                 and not (key == "act_clip_search" and getattr(recipe, key) is False)]  # "no search" says nothing
        if stray:
            key = stray[0]
            flag = where.flags.get(key)
            named = f"{flag} {getattr(recipe, key)!r}" if flag else f"{key} {getattr(recipe, key)!r}"
            fix = "add --act-bits 8 (or 4, 6)" if flag else "add act_bits: 8 (or 4, 6)"
            raise RecipeError(f"{where.text}: {named} sets activation quantization without its bits: {fix}, or "
                              f"leave {flag or key} out for weights only")
        return
    from ..quant.activations import SUPPORTED_ACTIVATION_BITS

    choices = ", ".join(map(str, SUPPORTED_ACTIVATION_BITS))
    if not _is_int(recipe.act_bits) or recipe.act_bits not in SUPPORTED_ACTIVATION_BITS:
        where.refuse("act_bits", f"one of {choices} (the bits of each activation)", recipe.act_bits,
                     fix=f"pass {choices}, or leave it out to quantize weights only")
    group = recipe.act_group
    if group is not None and group != "token" and not (_is_int(group) and group >= 1):
        where.refuse("act_group", "'token' or a positive group size", group,
                     fix="pass token (one scale per token) or a size that divides every linear's input width")
    if recipe.act_symmetric is not None:
        _boolean(recipe.act_symmetric, "act_symmetric", where)
    ratio = recipe.act_clip_ratio
    if ratio is not None and not _ratio(ratio):
        where.refuse("act_clip_ratio", "a clipping ratio in (0, 1]", ratio, fix="pass e.g. 0.9, or 1 for no clipping")
    search = recipe.act_clip_search
    if search is not None and not isinstance(search, bool):
        if not isinstance(search, (list, tuple)) or not search or not all(_ratio(r) for r in search):
            where.refuse("act_clip_search", "true, false or a list of clipping ratios in (0, 1]", search,
                         fix="pass e.g. 1.0,0.9,0.8")
        object.__setattr__(recipe, "act_clip_search", tuple(float(r) for r in search))  # frozen: kept as a tuple
    if search and ratio is not None:
        flags = [where.flags.get(k) or k for k in ("act_clip_ratio", "act_clip_search")]
        raise RecipeError(f"{where.text}: both {flags[0]} and {flags[1]} are set, but the search chooses each "
                          f"linear's clipping ratio: leave one of them out")


def _check_online_settings(recipe: Recipe, where: _Where) -> None:
    """``online_rotation`` and ``kv_bits`` as :class:`~tritium.models.online_rotation.OnlineRotationSettings` takes
    them (``online_rotation: false`` is off)."""
    if recipe.online_rotation is False:
        object.__setattr__(recipe, "online_rotation", None)  # frozen: "off" is kept as None
    if recipe.online_rotation is None and recipe.kv_bits is None:
        return
    from ..models.online_rotation import KV_CACHE_BITS, ONLINE_ROTATIONS

    if recipe.online_rotation is not None and recipe.online_rotation not in ONLINE_ROTATIONS:
        where.refuse("online_rotation", f"one of {', '.join(ONLINE_ROTATIONS)} (or off)", recipe.online_rotation,
                     fix="pass down_proj (R4), qk (R3, with a quantized KV cache) or all")
    if recipe.kv_bits is not None and (not _is_int(recipe.kv_bits) or recipe.kv_bits not in KV_CACHE_BITS):
        choices = ", ".join(map(str, KV_CACHE_BITS))
        where.refuse("kv_bits", f"one of {choices} (the bits of each cached key and value)", recipe.kv_bits,
                     fix=f"pass {choices}, or leave it out for a float KV cache")


def online_rotation_of(recipe: Mapping):
    """The :class:`~tritium.models.online_rotation.OnlineRotationSettings` of a recipe mapping, or None (off)."""
    from ..models.online_rotation import online_rotation_settings

    return online_rotation_settings(recipe.get("online_rotation"), recipe.get("kv_bits"))


def _ratio(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < float(value) <= 1.0


def activation_grid_of(recipe: Mapping):
    """The activation grid a recipe mapping (:meth:`Recipe.to_dict`) describes, or None for weights only; the
    keys it leaves out take the grid's defaults (per token, symmetric, no clipping)."""
    if recipe.get("act_bits") is None:
        return None
    from ..quant.activations import ActivationGrid

    settings = {"bits": recipe["act_bits"], "group": recipe.get("act_group"), "symmetric": recipe.get("act_symmetric"),
                "clip_ratio": recipe.get("act_clip_ratio")}
    return ActivationGrid(**{key: value for key, value in settings.items() if value is not None})


def activation_clip_candidates_of(recipe: Mapping) -> tuple[float, ...] | None:
    """The clipping ratios a recipe mapping searches on each linear, or None (no search)."""
    search = recipe.get("act_clip_search")
    if recipe.get("act_bits") is None or not search:
        return None
    return DEFAULT_ACT_CLIP_RATIOS if search is True else tuple(float(r) for r in search)
