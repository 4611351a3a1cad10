"""Pipeline pre-flight: the Nextflow run's parameters checked against nextflow_schema.json, offline, before any slide.

The nf-schema plugin cannot be had offline, so the pipeline's PREFLIGHT task calls ``atlaspatch check-params`` with
the run's parameters as JSON: every parameter must be declared in the schema (a typo is an error, with the nearest
known name), every value must fit its declared type and range, and the requested slide encoders must share one patch
geometry that matches --patch_size and --target_mag (the same check `atlaspatch encode-slide` makes up front).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} {path} is unreadable ({exc})") from None


def declared_params(schema: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """name -> property schema, over every group of $defs (nf-core layout) and top-level properties."""
    groups = [*schema.get("$defs", {}).values(), schema]
    return {name: prop for group in groups for name, prop in group.get("properties", {}).items()}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).replace("-", "_").lower()


def undeclared_params(params: Mapping[str, Any], known: Sequence[str]) -> list[str]:
    """One message per parameter the schema does not declare.

    Nextflow stores ``--patch-size`` as both ``patch-size`` and ``patchSize``; neither reaches the pipeline's
    ``patch_size``, so those are errors too, with the right spelling.
    """
    problems: list[str] = []
    reported: set[str] = set()
    for name in params:
        if name in known:
            continue
        snake = _snake(name)
        if snake in reported:
            continue
        reported.add(snake)
        if snake in known:
            problems.append(f"--{name} is not a parameter: write --{snake}")
            continue
        close = difflib.get_close_matches(snake, known, n=1, cutoff=0.75)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        problems.append(f"--{name} is not a parameter of this pipeline{hint}")
    return problems


def _message(error: Any) -> str:
    """jsonschema's error as one clause naming the parameter the way the user types it."""
    if error.validator == "required":
        return re.sub(r"'(\w+)' is a required property", r"--\1 is required", error.message)
    where = ".".join(str(part) for part in error.absolute_path)
    value = repr(error.instance) if isinstance(error.instance, str) else json.dumps(error.instance)
    return f"--{where} {value} {_reason(error)}"


def _reason(error: Any) -> str:
    rule = error.validator_value
    if error.validator == "type":
        names = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false"}
        kinds = [names.get(kind, kind) for kind in (rule if isinstance(rule, list) else [rule]) if kind != "null"]
        return f"must be {' or '.join(kinds)}"
    if error.validator == "enum":
        return f"must be one of {', '.join(map(str, rule))}"
    if error.validator in ("minimum", "maximum"):
        return f"must be {'>=' if error.validator == 'minimum' else '<='} {rule}"
    if error.validator == "pattern":
        return f"has the wrong form ({error.schema.get('description', rule)})"
    return error.message


def schema_errors(params: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    return sorted({_message(error) for error in validator.iter_errors(dict(params))})


def slide_encoder_errors(params: Mapping[str, Any], plugins: Sequence[str]) -> list[str]:
    """The geometry plan `encode-slide` makes up front, for --slide_encoders."""
    names = params.get("slide_encoders")
    if not names:
        return []
    from .encoders.patch import parse_names
    from .encoders.slide import plan_slide_encoders, slide_encoder_registry

    try:
        registry = slide_encoder_registry(plugins)
        specs = [registry.get(name) for name in parse_names(str(names), "--slide_encoders")]
        allow = bool(params.get("allow_mag_mismatch"))
        plan_slide_encoders(specs, int(params["patch_size"]), int(params["target_mag"]), allow)
    except ConfigError as exc:
        return [as_pipeline_options(str(exc))]
    return []


def patch_encoder_errors(params: Mapping[str, Any], plugins: Sequence[str]) -> list[str]:
    """Unknown --patch_encoders names, refused before any slide is segmented (as --slide_encoders are)."""
    names = params.get("patch_encoders")
    if not names:
        return []
    from .encoders.patch import parse_names, patch_encoder_registry

    try:
        registry = patch_encoder_registry(plugins)
        for name in parse_names(str(names), "--patch_encoders"):
            registry.get(name)
    except ConfigError as exc:
        return [as_pipeline_options(str(exc))]
    return []


def as_pipeline_options(text: str) -> str:
    """The CLI's --kebab-case option names in a message, as the pipeline's --snake_case parameters."""
    text = re.sub(r"--([a-z]+(?:-[a-z]+)+)", lambda match: "--" + match.group(1).replace("-", "_"), text)
    return text.replace("--output", "--outdir")


def _samplesheet_value(name: str, text: str | None) -> Any:
    """CSV cells are text: an empty mpp is none given, a numeric one a number (the schema judges the rest)."""
    if name != "mpp":
        return text
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        return text


def read_samplesheet(path: Path) -> list[dict[str, Any]]:
    import csv

    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"samplesheet {path} is unreadable ({exc})") from None
    return [{(k or "").strip(): _samplesheet_value((k or "").strip(), v) for k, v in row.items()} for row in rows]


def samplesheet_errors(path: Path, schema: Mapping[str, Any], slides_root: Path | None = None) -> list[str]:
    """Rows against assets/schema_input.json and unique ids; with ``slides_root``, also that every slide exists
    (relative paths start there). The pipeline checks existence on the launching machine instead, where the paths
    are meaningful (a container task may not see them)."""
    from jsonschema import Draft202012Validator

    rows = read_samplesheet(path)
    problems = []
    for error in Draft202012Validator(schema).iter_errors(rows):
        place = f"row {error.absolute_path[0] + 2}" if error.absolute_path else "samplesheet"
        column = f" {error.absolute_path[1]}" if len(error.absolute_path) > 1 else ""
        problems.append(f"{place}{column}: {error.schema.get('errorMessage', error.message)}")
    ids = [row.get("id") for row in rows]
    problems += [f"id {name!r} is used by more than one row" for name in sorted({i for i in ids if ids.count(i) > 1})]
    for number, row in enumerate(rows, start=2):
        slide = row.get("slide")
        if slides_root is not None and isinstance(slide, str) and slide and not (slides_root / slide).exists():
            problems.append(f"row {number}: slide {slide} does not exist")
    return [f"samplesheet {Path(path).name} {problem}" for problem in dict.fromkeys(problems)]


def check_params(
    params: Mapping[str, Any],
    schema: Mapping[str, Any],
    plugins: Sequence[str] = (),
    samplesheet: tuple[Path, Mapping[str, Any], Path | None] | None = None,
) -> None:
    """Raises one ConfigError listing every problem; the geometry plan runs only on well-typed parameters.

    ``samplesheet``: (the CSV, its schema, the folder its relative slide paths start from).
    """
    known = sorted(declared_params(schema))
    problems = undeclared_params(params, known)
    declared = {name: value for name, value in params.items() if name in known}
    typed = schema_errors(declared, schema)
    problems += typed
    if not typed:
        problems += patch_encoder_errors(declared, plugins) + slide_encoder_errors(declared, plugins)
    if samplesheet is not None:
        problems += samplesheet_errors(*samplesheet)
    if problems:
        raise ConfigError("invalid pipeline parameters: " + "; ".join(problems))
