"""Training captions for a product: its title, optionally plus sentences built from its attributes.

Titles alone teach a model brand-heavy strings; short attribute sentences ("Men Shirts in Navy Blue") add the
plain category/colour phrasing that shoppers type, which is what the attribute-query benchmark measures.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

from enclip.errors import EnclipError


@dataclass
class CaptionCfg:
    use_attributes: bool = False  # also build captions from attribute templates
    templates: tuple[str, ...] = (  # str.format over attributes; skipped for an item missing any field
        "{gender} {articleType} in {baseColour}",
        "{baseColour} {articleType} for {usage}",
    )
    missing_values: tuple[str, ...] = ("NA",)  # attribute values treated as missing in templates ("for NA" reads badly)


def template_fields(template: str) -> list[str]:
    """Attribute names a template uses; raises EnclipError for positional fields, which no attribute can fill."""
    fields = []
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name is None:
            continue
        name = field_name.split(".")[0].split("[")[0]
        if not name or name.isdigit():
            raise EnclipError(
                f"caption template {template!r} has a positional field; name an attribute instead, e.g. {{articleType}}"
            )
        fields.append(name)
    return fields


def _fill(template: str, attributes: Mapping[str, str], missing_values: tuple[str, ...]) -> str | None:
    values = {}
    for name in template_fields(template):
        value = str(attributes.get(name) or "").strip()
        if not value or value in missing_values:
            return None
        values[name] = value
    return " ".join(template.format(**values).split())


def build_captions(title: str, attributes: Mapping[str, str], cfg: CaptionCfg) -> list[str]:
    """The item's captions: the title first, then each attribute template that all of its fields can fill.

    Captions identical to an earlier one are dropped, so a template that reproduces the title adds no weight.
    """
    captions = [title]
    if not cfg.use_attributes:
        return captions
    for template in cfg.templates:
        caption = _fill(template, attributes, cfg.missing_values)
        if caption and caption not in captions:
            captions.append(caption)
    return captions
