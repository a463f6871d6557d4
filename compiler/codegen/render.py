"""The Jinja environment over the kernel templates (package `netc.templates`).

Templates are thin: they declare a kernel's entry point (name, parameter list, launch bounds)
and call the kernel's logic, which lives in the `.cuh` headers beside them. Undefined template
variables are errors (`StrictUndefined`), never empty strings.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import jinja2


def cuda_bool(value: bool) -> str:
    return "true" if value else "false"


@cache
def environment() -> jinja2.Environment:
    root = resources.files("netc.templates")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["cuda_bool"] = cuda_bool
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


@cache
def header(name: str) -> str:
    """The text of a `.cuh` header, to be inlined into a module."""
    return resources.files("netc.templates").joinpath(name).read_text(encoding="utf-8")


def template_names() -> list[str]:
    return sorted(environment().list_templates(extensions=["jinja"]))
