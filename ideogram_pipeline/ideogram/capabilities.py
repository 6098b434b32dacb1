"""What Ideogram takes, per model: the one table CSV validation, request building and the
bundled simulator all read.

Why one table: which fields a model takes, each field's allowed values and bounds, and how
each endpoint spells both used to be copied into three places that could drift apart. Here
they are derived once:

- for ``POST /v1/ideogram-v3/generate`` and the legacy ``POST /generate``, from the bundled
  request schemas (``request_schemas.json``, derived from Ideogram's published OpenAPI by
  ``scripts/derive_request_schemas.py``), including the spec's prose limits on which legacy
  models take ``negative_prompt``, ``style_type`` and ``resolution`` (``x-model-limits``);
- for Ideogram's v2 API (``ideogram-4``, ``ideogram-4-5`` and the v2 paths of 3.0: plain and
  with style references ``ideogram-3``, with a character reference ``ideogram-3-character``,
  transparent ``ideogram-3-transparent``), which that spec does not describe, from the small
  documented table in :func:`_v2_routes`, citing ``reference/ideogram-api-v2-notes.md``
  (§1 "Shared fields", "Model paths", "4.5 details").

Canonical spellings are what records carry and CSV validation returns: the field names of
:class:`~ideogram_pipeline.ideogram.generation.GenerationRequest`, ``16x9`` ratios, ``1024x1024``
resolutions, upper-case words. A :class:`FieldRule` maps them to one endpoint's spelling
(``ASPECT_16_9``, ``magic_prompt_option``, lower-case ``turbo``, 4.5's ``quality``).

Adding a field that the spec declares (issue 18: ``style_preset``, ``style_codes``, ...) is one
:data:`FIELDS` entry naming its property on each endpoint; its values and bounds then come
from the schema, and requests carry it once ``GenerationRequest`` has an attribute of that name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal

from ideogram_pipeline.ideogram import controls, spec

__all__ = [
    "CAPABILITIES",
    "EXCLUSIVE_FIELDS",
    "FIELDS",
    "LEGACY_MODELS",
    "LEGACY_PATH",
    "LEGACY_V2_PATHS",
    "MODELS",
    "PROMPT_MAX_CHARS",
    "V2_CHARACTER",
    "V2_ONLY_MODELS",
    "V2_ROUTES",
    "V3_MODEL",
    "V3_PATH",
    "V3_TRANSPARENT_PATH",
    "FieldRule",
    "FieldSource",
    "ModelCapability",
    "Route",
    "capability",
    "models_taking",
]

Endpoint = Literal["v3", "legacy", "v2"]
#: ``structured``: objects and lists (colour palettes, style codes) the schema validates.
RuleKind = Literal["text", "integer", "choice", "boolean", "structured"]

V3_MODEL = "V_3"
V3_PATH = "/v1/ideogram-v3/generate"
#: Ideogram 3.0 with a transparent background (issue 18's ``transparent`` column).
V3_TRANSPARENT_PATH = "/v1/ideogram-v3/generate-transparent"
V3_TRANSPARENT_SCHEMA = "GenerateTransparentImageRequestV3"
V2_TRANSPARENT = "ideogram-3-transparent"
#: Ideogram 3.0 with a character reference: its own v2 path and product (v2 notes §1, §6).
V2_CHARACTER = "ideogram-3-character"
#: The reference image fields of each 3.0 path on v2 (v2 notes §1 "Model paths":
#: ``ideogram-3`` lists ``style_reference_images``, ``ideogram-3-character`` "character refs").
_CHARACTER_FIELDS = ("character_reference_images", "character_reference_images_mask")
LEGACY_PATH = "/generate"
V2_PATH_PREFIX = "/v2/image/generate/"

#: Ideogram's documented prompt limit (v2 notes §1, "Shared fields": "Up to 10,000 chars");
#: the v1 schema declares no maxLength, so it is stated here for every endpoint.
PROMPT_MAX_CHARS = 10_000

#: Fields that cannot be sent together, with the spec's words (``GenerateImageRequestV3``).
EXCLUSIVE_FIELDS: tuple[tuple[str, str, str], ...] = spec.CROSS_FIELD_RULES

_RATIO_WIRE = re.compile(r"(?:ASPECT|RESOLUTION)_(\d+)_(\d+)")


@dataclass(frozen=True)
class FieldSource:
    """Where one canonical field lives on each schema-described endpoint.

    ``v3`` names the ``GenerateImageRequestV3`` property, ``legacy`` the ``ImageRequest``
    one; ``None`` means that endpoint has no such field.
    """

    name: str
    v3: str | None
    legacy: str | None


#: Every request field the pipeline sends, in body order. The one place to add a field.
FIELDS: tuple[FieldSource, ...] = (
    FieldSource("prompt", v3="prompt", legacy="prompt"),
    FieldSource("num_images", v3="num_images", legacy="num_images"),
    FieldSource("seed", v3="seed", legacy="seed"),
    FieldSource("aspect_ratio", v3="aspect_ratio", legacy="aspect_ratio"),
    FieldSource("resolution", v3="resolution", legacy="resolution"),
    FieldSource("rendering_speed", v3="rendering_speed", legacy=None),
    FieldSource("magic_prompt", v3="magic_prompt", legacy="magic_prompt_option"),
    FieldSource("style_type", v3="style_type", legacy="style_type"),
    FieldSource("negative_prompt", v3="negative_prompt", legacy="negative_prompt"),
    # Issue 18: Ideogram 3.0's consistency controls (structured forms: ideogram/controls.py).
    FieldSource("style_preset", v3="style_preset", legacy=None),
    FieldSource("style_codes", v3="style_codes", legacy=None),
    FieldSource("color_palette", v3="color_palette", legacy=None),
    # Reference images: multipart file parts (ideogram/references.py), never JSON values.
    FieldSource("style_reference_images", v3="style_reference_images", legacy=None),
    FieldSource("character_reference_images", v3="character_reference_images", legacy=None),
    FieldSource(
        "character_reference_images_mask", v3="character_reference_images_mask", legacy=None
    ),
)


@dataclass(frozen=True)
class FieldRule:
    """One field as one endpoint takes it: its names, allowed values and bounds.

    ``choices`` pairs each canonical value with the endpoint's spelling; ``None`` there means
    "leave the field out", so the endpoint's documented default applies. ``wire_choices`` is
    every spelling the endpoint accepts, which may be more than the canonical values reach.
    ``minimum``/``maximum`` bound integers, and the length of text.
    """

    name: str
    wire_name: str
    kind: RuleKind
    choices: tuple[tuple[str, str | None], ...] = ()
    wire_choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    source: str = ""

    @property
    def values(self) -> tuple[str, ...]:
        """The canonical allowed values of a choice field, in the spec's order."""
        return tuple(canonical for canonical, _wire in self.choices)

    def to_wire(self, value: Any) -> Any:
        """``value`` (canonical) as this endpoint spells it. A value outside the table is
        sent as given, so the endpoint (or a test's schema check) refuses it by name."""
        if self.kind == "structured":
            return controls.structured_to_wire(self.name, value)
        if self.kind != "choice":
            return value
        return dict(self.choices).get(str(value), value)

    def wire_error(self, value: Any) -> str | None:
        """Why ``value``, as the endpoint received it, is refused; ``None`` when it is fine."""
        where = self.wire_name
        if self.kind == "structured":
            problem = controls.structured_wire_error(self.name, value)
            return None if problem is None else f"{where}: {problem}"
        if self.kind == "choice" and value not in self.wire_choices:
            shown = ", ".join(self.wire_choices[:12])
            more = ", ..." if len(self.wire_choices) > 12 else ""
            return f"{where}: {value!r} is not one of {shown}{more}"
        if self.kind == "boolean" and not isinstance(value, bool):
            return f"{where}: must be a boolean"
        if self.kind == "integer":
            low = self.minimum if self.minimum is not None else "-inf"
            high = self.maximum if self.maximum is not None else "inf"
            if not isinstance(value, int) or isinstance(value, bool) or not self._within(value):
                return f"{where}: must be an integer in {low}..{high}"
        if self.kind == "text":
            if not isinstance(value, str) or (self.minimum and not value.strip()):
                return f"{where}: required, a non-empty string"
            if not self._within(len(value)):
                return f"{where}: longer than {self.maximum:,} characters"
        return None

    def _within(self, number: int) -> bool:
        low_ok = self.minimum is None or number >= self.minimum
        return low_ok and (self.maximum is None or number <= self.maximum)


@dataclass(frozen=True)
class Route:
    """One endpoint path as one model uses it: the fields it takes, keyed by canonical name.

    ``extras`` are body fields the endpoint also accepts that the table does not describe
    (left to the JSON Schema, or route-level like v2's ``async``).
    """

    endpoint: Endpoint
    path: str
    rules: tuple[FieldRule, ...]
    extras: tuple[str, ...] = ()

    def rule(self, name: str) -> FieldRule | None:
        """The rule of canonical field ``name``, or ``None`` when this route lacks it."""
        return next((rule for rule in self.rules if rule.name == name), None)

    def wire_errors(self, body: Mapping[str, Any], model: str) -> list[str]:
        """Errors for a body as this route receives it (endpoint names and spellings).

        The simulator's check: fields the model does not take, values outside the table,
        bounds, and the spec's exclusive pairs. Each error starts with the field's name.
        """
        known = {rule.wire_name for rule in self.rules} | set(self.extras)
        errors = [f"{name}: not accepted by {model}" for name in body if name not in known]
        for rule in self.rules:
            value = body.get(rule.wire_name)
            if value is None and rule.name == "prompt":
                errors.append(f"{rule.wire_name}: required, a non-empty string")
            elif value is not None and (problem := rule.wire_error(value)) is not None:
                errors.append(problem)
        errors += [
            f"{first}+{second}: {reason}"
            for first, second, reason in EXCLUSIVE_FIELDS
            if body.get(first) is not None and body.get(second) is not None
        ]
        return errors


@dataclass(frozen=True)
class ModelCapability:
    """Everything one model takes. ``route`` serves synchronous requests and decides what a
    CSV row may carry; ``v2_route`` is the model's asynchronous v2 path, when it has one."""

    model: str
    route: Route
    v2_route: Route | None = None
    #: The transparent-background endpoint, synchronous and v2, when the model has one.
    transparent_route: Route | None = None
    v2_transparent_route: Route | None = None
    #: The v2 path for requests with a character reference, when the model has one.
    v2_character_route: Route | None = None

    def rule(self, name: str) -> FieldRule | None:
        return self.route.rule(name)

    def takes(self, name: str) -> bool:
        return self.route.rule(name) is not None


# -- derivation from the bundled schemas ----------------------------------------------------


def _canonical(wire: str) -> str:
    """``ASPECT_16_9`` -> ``16x9``, ``RESOLUTION_1024_1024`` -> ``1024x1024``; others as is."""
    match = _RATIO_WIRE.fullmatch(wire)
    return f"{match.group(1)}x{match.group(2)}" if match else wire


def _schema_rule(name: str, schema: str, wire_name: str) -> FieldRule:
    """The rule of one schema property: an enum, a bounded integer, text or structure."""
    prop = spec.property_schema(schema, wire_name)
    source = f"{schema}.{wire_name}"
    if "enum" in prop:
        wire = tuple(str(value) for value in prop["enum"] if value is not None)
        choices = tuple((_canonical(value), value) for value in wire)
        return FieldRule(name, wire_name, "choice", choices, wire, source=source)
    declared = prop.get("type")
    if declared == "integer":
        low, high = prop.get("minimum"), prop.get("maximum")
        return FieldRule(name, wire_name, "integer", minimum=low, maximum=high, source=source)
    if declared == "boolean":
        return FieldRule(name, wire_name, "boolean", source=source)
    if declared == "string":
        if name == "prompt":
            length = f"{source}; length: v2 notes §1 shared fields"
            return FieldRule(
                name, wire_name, "text", minimum=1, maximum=PROMPT_MAX_CHARS, source=length
            )
        low, high = prop.get("minLength"), prop.get("maxLength")
        return FieldRule(name, wire_name, "text", minimum=low, maximum=high, source=source)
    return FieldRule(name, wire_name, "structured", source=source)


def _schema_properties(schema: str) -> tuple[str, ...]:
    return tuple(spec.schema_document()["$defs"][schema]["properties"])


def _v3_route() -> Route:
    schema = "GenerateImageRequestV3"
    mapped = {source.v3 for source in FIELDS}
    rules = tuple(_schema_rule(s.name, schema, s.v3) for s in FIELDS if s.v3 is not None)
    extras = tuple(name for name in _schema_properties(schema) if name not in mapped)
    return Route("v3", V3_PATH, rules, extras)


def _transparent_route() -> Route:
    """``POST /v1/ideogram-v3/generate-transparent``: the 3.0 fields its schema declares."""
    declared = set(_schema_properties(V3_TRANSPARENT_SCHEMA))
    mapped = {source.v3 for source in FIELDS}
    rules = tuple(
        _schema_rule(s.name, V3_TRANSPARENT_SCHEMA, s.v3)
        for s in FIELDS
        if s.v3 is not None and s.v3 in declared
    )
    extras = tuple(name for name in _schema_properties(V3_TRANSPARENT_SCHEMA) if name not in mapped)
    return Route("v3", V3_TRANSPARENT_PATH, rules, extras)


def _legacy_route(model: str) -> Route:
    """``POST /generate`` for one model: the ``ImageRequest`` fields minus those the spec's
    prose reserves for other models."""
    limits = spec.model_limits()
    mapped = {source.legacy for source in FIELDS}
    rules = tuple(
        _schema_rule(source.name, "ImageRequest", source.legacy)
        for source in FIELDS
        if source.legacy is not None and model in limits.get(source.legacy, (model,))
    )
    extras = tuple(name for name in _schema_properties("ImageRequest") if name not in mapped)
    return Route("legacy", LEGACY_PATH, rules, extras)


# -- the v2 API: a documented table -----------------------------------------------------------


def _lowered(rule: FieldRule, source: str) -> FieldRule:
    """A v1 rule as the v2 API takes it: the same values, lower-case (notes §1, SPEC3P)."""
    if rule.kind != "choice":
        return rule
    choices = tuple((canonical, canonical.lower()) for canonical in rule.values)
    wire = tuple(canonical.lower() for canonical in rule.values)
    return FieldRule(rule.name, rule.wire_name, "choice", choices, wire, source=source)


def _v2_choice(
    name: str, wire_name: str, pairs: dict[str, str | None], source: str, *wire_values: str
) -> FieldRule:
    """A v2 choice: canonical -> wire ``pairs``; ``wire_values`` lists everything the endpoint
    accepts when that is more than the pairs reach."""
    wire = wire_values or tuple(w for w in pairs.values() if w is not None)
    return FieldRule(name, wire_name, "choice", tuple(pairs.items()), wire, source=source)


#: The v2 API's speed knob on ideogram-4 (notes §1 "Model paths": turbo/default/quality).
_V2_SPEEDS = ("TURBO", "DEFAULT", "QUALITY")
#: ideogram-4's sizes beyond the 3.0 ones (notes §1 "Model paths": "2K presets").
_IDEOGRAM_4_2K_SIZES = ("2048x2048", "2048x1152", "1152x2048")
#: 4.5's ``quality`` for our speeds (notes §1 "4.5 details"); DEFAULT leaves it out, so 4.5's
#: own default (high, without images) applies, which is how prices.py bills it.
_IDEOGRAM_4_5_QUALITY: dict[str, str | None] = {"TURBO": "low", "DEFAULT": None, "QUALITY": "high"}
#: 4.5's own ``quality`` column (notes §1 "4.5 details"; ``very_low`` needs source images).
_IDEOGRAM_4_5_QUALITY_TIERS = ("LOW", "MEDIUM", "HIGH")


def _v2_routes(v3: Route) -> dict[str, tuple[FieldRule, ...]]:
    """The v2 model paths the pipeline uses, keyed by path name: a documented table.

    Sources (``reference/ideogram-api-v2-notes.md`` §1): "Shared fields" (prompt up to 10,000
    characters, ``num_images`` 1-8, ``async``; enums lower-case); "Model paths":
    ``ideogram-3`` takes the 3.0 fields (with all five v1 rendering speeds, since V_3 rows
    go there in async mode), ``ideogram-4`` takes ``resolution`` and ``rendering_speed`` but
    no ``aspect_ratio``; "4.5 details": ``quality`` low/medium/high, ``size``,
    ``enable_copyright_detection``. Seeds are bounded as on v1.
    """
    by_name = {rule.name: rule for rule in v3.rules}
    shared_source = "v2 notes §1 shared fields"
    shared = (
        *(_lowered(by_name[name], shared_source) for name in ("prompt", "num_images", "seed")),
        _lowered(by_name["magic_prompt"], shared_source),
        FieldRule("async", "async", "boolean", source=shared_source),
    )
    four_sizes = (*by_name["resolution"].values, *_IDEOGRAM_4_2K_SIZES)
    three_source = "v2 notes §1 model paths: ideogram-3"
    character_source = "v2 notes §1 model paths: ideogram-3-character (character refs)"
    return {
        # Style references only: character references are the character path's product.
        "ideogram-3": (
            *(_lowered(r, three_source) for r in v3.rules if r.name not in _CHARACTER_FIELDS),
            FieldRule("async", "async", "boolean", source=shared_source),
        ),
        # The notes name only "character refs" here; the other 3.0 fields are taken as on
        # ideogram-3 (as on v1, where one generate takes them), style references excepted:
        # the notes list those on ideogram-3 alone, so a row with both stays on v1.
        V2_CHARACTER: (
            *(
                _lowered(r, character_source)
                for r in v3.rules
                if r.name != "style_reference_images"
            ),
            FieldRule("async", "async", "boolean", source=shared_source),
        ),
        "ideogram-4": (
            *shared,
            _v2_choice(
                "resolution",
                "resolution",
                {size: size for size in four_sizes},
                "v2 notes §1 model paths: ideogram-4 (3.0 sizes and 2K presets)",
            ),
            _v2_choice(
                "rendering_speed",
                "rendering_speed",
                {speed: speed.lower() for speed in _V2_SPEEDS},
                "v2 notes §1 model paths: ideogram-4",
            ),
        ),
        "ideogram-4-5": (
            *shared,
            _v2_choice(
                "rendering_speed",
                "quality",
                _IDEOGRAM_4_5_QUALITY,
                "v2 notes §1 4.5 details: quality",
                *("low", "medium", "high"),
            ),
            _v2_choice(
                "quality",
                "quality",
                {tier: tier.lower() for tier in _IDEOGRAM_4_5_QUALITY_TIERS},
                "v2 notes §1 4.5 details: quality",
                *("low", "medium", "high"),
            ),
            FieldRule("size", "size", "structured", source="v2 notes §1 4.5 details: size"),
            FieldRule(
                "enable_copyright_detection",
                "enable_copyright_detection",
                "boolean",
                source="v2 notes §1 4.5 details",
            ),
        ),
    }


#: Legacy models that Ideogram's v2 API also serves, asynchronously (notes §1 "Model paths":
#: ``ideogram-2``, ``ideogram-2a``; §8: the legacy ``POST /generate`` maps onto them). Their
#: turbo variants and V_1 have no v2 path and stay on the synchronous legacy endpoint.
LEGACY_V2_PATHS: Mapping[str, str] = MappingProxyType({"V_2": "ideogram-2", "V_2A": "ideogram-2a"})
#: Fields of those paths (notes §1: aspect_ratio, magic_prompt, style_type, negative_prompt on
#: ideogram-2 only, plus the shared prompt, num_images, seed); v1's ``resolution`` is not
#: among them, so a row that sets it stays synchronous.
_LEGACY_V2_FIELDS = ("prompt", "num_images", "seed", "aspect_ratio", "magic_prompt", "style_type")


def _legacy_v2_rules(legacy: Route, path: str) -> tuple[FieldRule, ...]:
    """A legacy model's fields as its v2 path takes them: v2 names (``magic_prompt``, not
    ``magic_prompt_option``), lower-case enums (``16x9``, ``render_3d``), and ``async``."""
    source = f"v2 notes §1 model paths: {path}"
    names = _LEGACY_V2_FIELDS + (("negative_prompt",) if path == "ideogram-2" else ())
    rules = tuple(
        replace(_lowered(rule, source), wire_name=rule.name, source=source)
        for rule in legacy.rules
        if rule.name in names
    )
    return (*rules, FieldRule("async", "async", "boolean", source="v2 notes §1 shared fields"))


def _build() -> tuple[dict[str, ModelCapability], dict[str, Route]]:
    v3 = _v3_route()
    transparent = _transparent_route()
    v2_rules = _v2_routes(v3)
    # v2 notes §1 "Model paths": ideogram-3-transparent, the 3.0 transparent fields, async.
    v2_rules[V2_TRANSPARENT] = (
        *(
            _lowered(r, "v2 notes §1 model paths: ideogram-3-transparent")
            for r in transparent.rules
        ),
        FieldRule("async", "async", "boolean", source="v2 notes §1 shared fields"),
    )
    v2 = {path: Route("v2", f"{V2_PATH_PREFIX}{path}", rules) for path, rules in v2_rules.items()}
    table = {
        V3_MODEL: ModelCapability(
            V3_MODEL,
            v3,
            v2["ideogram-3"],
            transparent,
            v2[V2_TRANSPARENT],
            v2_character_route=v2[V2_CHARACTER],
        )
    }
    for path in ("ideogram-4", "ideogram-4-5"):
        table[path] = ModelCapability(path, v2[path], v2[path])
    # V_3 has its own endpoint and AUTO lets Ideogram pick (so no price is known): neither is
    # sent to POST /generate.
    for model in spec.enum_values("ModelEnum"):
        if model not in (V3_MODEL, "AUTO"):
            legacy = _legacy_route(model)
            v2_route = None
            if (v2_name := LEGACY_V2_PATHS.get(model)) is not None:
                rules = _legacy_v2_rules(legacy, v2_name)
                v2_route = v2[v2_name] = Route("v2", f"{V2_PATH_PREFIX}{v2_name}", rules)
            table[model] = ModelCapability(model, legacy, v2_route)
    return table, v2


_TABLE, _V2 = _build()
#: Model name -> what it takes. Models are ours: ``V_3``, ``ideogram-4``, ``V_2_TURBO``, ...
CAPABILITIES: Mapping[str, ModelCapability] = MappingProxyType(_TABLE)
#: v2 path name (``ideogram-3``, ``ideogram-3-character``, ``ideogram-4``, ...) -> its route.
V2_ROUTES: Mapping[str, Route] = MappingProxyType(_V2)

#: Models served by the legacy ``POST /generate`` endpoint, in the spec's order.
LEGACY_MODELS: tuple[str, ...] = tuple(
    model for model, cap in _TABLE.items() if cap.route.endpoint == "legacy"
)
#: Models only on Ideogram's v2 API (``POST /v2/image/generate/{model}``).
V2_ONLY_MODELS: tuple[str, ...] = tuple(
    model for model, cap in _TABLE.items() if cap.route.endpoint == "v2"
)
MODELS: tuple[str, ...] = (V3_MODEL, *V2_ONLY_MODELS, *LEGACY_MODELS)


def capability(model: str) -> ModelCapability:
    """What ``model`` takes; a ``KeyError`` naming the known models otherwise."""
    try:
        return _TABLE[model]
    except KeyError:
        raise KeyError(f"unknown model {model!r}; known: {', '.join(MODELS)}") from None


def models_taking(name: str, value: str | None = None) -> tuple[str, ...]:
    """Models that take field ``name`` (with canonical ``value``, when given), in MODELS order."""
    found: list[str] = []
    for model in MODELS:
        rule = _TABLE[model].rule(name)
        if rule is not None and (value is None or value in rule.values):
            found.append(model)
    return tuple(found)
