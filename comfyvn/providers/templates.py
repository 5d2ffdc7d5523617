"""Provider templates: per kind, the fields of a ``POST /api/providers`` body with their labels,
types, defaults, whether they are required or secret, and help text.

The Studio builds its Add / Edit dialog from them (``GET /api/providers/templates``). Nothing
here lists a field by hand: the general fields come from :class:`ProviderCreate`, the
``config.*`` fields from the kind's config model (:data:`KIND_CONFIG`), the ``thresholds.*``
fields from :class:`ThresholdOverrides` (each names the kinds it applies to) and the secret from
the kind's adapter, so a template always matches what the API accepts.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from .adapters import adapter_class
from .models import (
    DEFAULT_BASE_URLS,
    KIND_CONFIG,
    KINDS,
    QUOTA_KINDS,
    SLUG_RE,
    Kind,
    ProviderCreate,
    ThresholdOverrides,
    Thresholds,
)

__all__ = [
    "FieldType",
    "ProviderTemplate",
    "TemplateField",
    "TemplateList",
    "body_from_values",
    "provider_templates",
]

FieldType = Literal[
    "string", "slug", "url", "secret", "boolean", "integer", "number", "choice", "integers"
]
Group = Literal["general", "credentials", "options", "thresholds"]

# Kind -> (template label, default provider name). Order: the order the Studio offers them in.
_LABELS: dict[str, tuple[str, str]] = {
    "comfyui": ("Local ComfyUI", "Local ComfyUI"),
    "runpod": ("RunPod", "RunPod"),
    "openai": ("OpenAI-compatible", "OpenAI-compatible"),
    "http": ("Generic HTTP", "HTTP service"),
    "echo": ("Echo (built-in test provider)", "Echo"),
}
assert set(_LABELS) == set(KINDS), "every kind needs a template label"

# ProviderCreate fields the template expands per kind instead of listing as one field.
_EXPANDED = ("kind", "config", "thresholds", "secrets")
_FIRST = ("name", "id", "base_url")  # then any other general field, in the model's order
_SECRET_HELP = (
    " Or env:COMFYVN_SECRET_NAME to read it from the server's environment at check time. "
    "Write-only: never shown again, only a masked hint."
)


class TemplateField(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Where the value goes in a POST /api/providers body: 'name', 'base_url', "
        "'config.health_path', 'secrets.api_key', 'thresholds.low_balance'..."
    )
    label: str
    type: FieldType = Field(
        description="string, slug, url, secret (write-only), boolean, integer, number, choice "
        "(one of 'choices') or integers (a list of integers)."
    )
    group: Group = Field(description="general, credentials, options or thresholds")
    default: Any = Field(
        None, description="The value an untouched form sends; null: omitted (server default)."
    )
    required: bool = Field(description="The form must not be sent without a value.")
    secret: bool = Field(
        False, description="Write-only: never returned; a saved one shows only a masked hint."
    )
    help: str = ""
    placeholder: str | None = Field(
        None, description="What applies when left empty (e.g. the server's default threshold)."
    )
    choices: list[str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = Field(None, description="A regular expression the value must match.")


class ProviderTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind
    label: str
    description: str
    supports_quota: bool
    fields: list[TemplateField]
    body: dict[str, Any] = Field(
        description="The POST /api/providers body built from the defaults; required fields "
        "without a default (a RunPod key, a generic HTTP base_url) still need a value."
    )


class TemplateList(BaseModel):
    ok: bool = True
    templates: list[ProviderTemplate]


def provider_templates() -> list[ProviderTemplate]:
    """One template per kind, in the order the Studio offers them."""
    return [_template(kind) for kind in _LABELS]


def body_from_values(values: dict[str, Any]) -> dict[str, Any]:
    """A create body from ``{field name: value}``: dotted names nest, ``None`` is omitted."""
    body: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        head, _, rest = name.partition(".")
        if rest:
            body.setdefault(head, {})[rest] = value
        else:
            body[head] = value
    return body


def _template(kind: str) -> ProviderTemplate:
    label, default_name = _LABELS[kind]
    adapter = adapter_class(kind)
    fields = [
        *_general_fields(kind, default_name),
        *_secret_fields(adapter),
        *_config_fields(kind),
        *_threshold_fields(kind),
    ]
    body = body_from_values({f.name: f.default for f in fields})
    return ProviderTemplate(
        kind=kind,
        label=label,
        description=KINDS[kind],
        supports_quota=kind in QUOTA_KINDS,
        fields=fields,
        body={"kind": kind, **body},
    )


def _general_fields(kind: str, default_name: str) -> list[TemplateField]:
    out = []
    general = [n for n in ProviderCreate.model_fields if n not in _EXPANDED]
    general.sort(key=lambda n: _FIRST.index(n) if n in _FIRST else len(_FIRST))
    for name in general:
        info = ProviderCreate.model_fields[name]
        field_type, choices = _type_of(info.annotation)
        default, required, placeholder = info.default, False, None
        if name == "name":
            default, required = default_name, True
        elif name == "id":
            field_type, placeholder = "slug", "derived from the name"
        elif name == "base_url":
            if kind not in DEFAULT_BASE_URLS:
                required = True
            elif DEFAULT_BASE_URLS[kind] is None:
                continue  # echo: never touches the network
            default, field_type = DEFAULT_BASE_URLS.get(kind), "url"
        out.append(
            _field(
                name,
                info,
                field_type,
                "general",
                default=default,
                required=required,
                choices=choices,
                placeholder=placeholder,
                pattern=SLUG_RE.pattern if name == "id" else None,
            )
        )
    return out


def _secret_fields(adapter: Any) -> list[TemplateField]:
    if not adapter.uses_key:
        return []
    return [
        TemplateField(
            name="secrets.api_key",
            label="API key",
            type="secret",
            group="credentials",
            required=adapter.needs_key,
            secret=True,
            help=adapter.key_help + _SECRET_HELP,
            placeholder="required" if adapter.needs_key else "optional",
        )
    ]


def _config_fields(kind: str) -> list[TemplateField]:
    model = KIND_CONFIG.get(kind)
    if model is None:
        return []
    out = []
    for name, info in model.model_fields.items():
        field_type, choices = _type_of(info.annotation)
        out.append(
            _field(
                f"config.{name}",
                info,
                field_type,
                "options",
                default=info.default,
                required=False,
                choices=choices,
            )
        )
    return out


def _threshold_fields(kind: str) -> list[TemplateField]:
    defaults = Thresholds()
    out = []
    for name, info in ThresholdOverrides.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if kind not in extra.get("kinds", ()):
            continue
        field_type, choices = _type_of(info.annotation)
        out.append(
            _field(
                f"thresholds.{name}",
                info,
                field_type,
                "thresholds",
                default=None,  # unset: the server default applies (and follows it if it changes)
                required=False,
                choices=choices,
                placeholder=f"{getattr(defaults, name):g} (default)",
            )
        )
    return out


def _field(
    name: str,
    info: FieldInfo,
    field_type: str,
    group: str,
    *,
    default: Any,
    required: bool,
    choices: list[str] | None = None,
    placeholder: str | None = None,
    pattern: str | None = None,
) -> TemplateField:
    short = name.rsplit(".", 1)[-1]
    minimum = maximum = None
    for rule in info.metadata:
        if isinstance(rule, annotated_types.Ge):
            minimum = float(rule.ge)
        elif isinstance(rule, annotated_types.Le):
            maximum = float(rule.le)
    return TemplateField(
        name=name,
        label=info.title or short.replace("_", " ").capitalize(),
        type=field_type,
        group=group,
        default=default,
        required=required,
        help=info.description or "",
        placeholder=placeholder,
        choices=choices,
        minimum=minimum,
        maximum=maximum,
        pattern=pattern,
    )


def _type_of(annotation: Any) -> tuple[str, list[str] | None]:
    """The template type of a pydantic field annotation (``X | None`` is ``X``)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    origin = get_origin(annotation)
    if origin is Literal:
        return "choice", [str(a) for a in get_args(annotation)]
    if origin is list and get_args(annotation) == (int,):
        return "integers", None
    if annotation is bool:
        return "boolean", None
    if annotation is int:
        return "integer", None
    if annotation is float:
        return "number", None
    if annotation is str:
        return "string", None
    raise TypeError(f"no template type for {annotation!r}")
