"""The Helm chart's documentation (helm/moss-audio): values.yaml, README.md, values.schema.json.

values.yaml documents every value with a `## @param` comment in readme-generator-for-helm's
syntax (https://github.com/bitnami/readme-generator-for-helm), and README.md's parameter tables
are generated from those comments by `make chart-docs`. That tool needs Node.js; these tests do
not: they re-derive, in Python, the rows the generator writes (same comment grammar, same
flattening of values.yaml into dotted keys, same value formatting) and compare them with the
README, so that a changed value or comment with a README left behind fails here. The last test
renders the chart (Helm's library, as in test_helm.py) to check that _validate.tpl reports every
inconsistent setting at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from tests.deploy.test_helm import CHART, NAMESPACE, RELEASE, _loaded_chart

VALUES = CHART / "values.yaml"
README = CHART / "README.md"
SCHEMA = CHART / "values.schema.json"
REGENERATE = "run `make chart-docs` (needs Node.js/npx) and commit helm/moss-audio/README.md"

# --------------------------------------------------------------------------------------------
# values.yaml's metadata comments, parsed as readme-generator-for-helm parses them
# (lib/parser.js, default config.json: comment format `##`).
# --------------------------------------------------------------------------------------------

PARAM_RE = re.compile(r"^\s*##\s*@param\s*(\S+)\s*(\[.*?\])?\s*(.*)$")
EXTRA_RE = re.compile(r"^\s*##\s*@extra\s*(\S+)\s*(\[.*?\])?\s*(.*)$")
SKIP_RE = re.compile(r"^\s*##\s*@skip\s*(\S+)\s*(.*)$")
SECTION_RE = re.compile(r"^\s*##\s*@section\s*(.*)$")
DESCRIPTION_START_RE = re.compile(r"^\s*##\s*@descriptionStart\s*(.*)")
DESCRIPTION_CONTENT_RE = re.compile(r"^\s*##\s?(.*)")
DESCRIPTION_END_RE = re.compile(r"^\s*##\s*@descriptionEnd\s*(.*)")
SIMPLE_MODIFIERS = ("array", "object", "string", "nullable")


@dataclass
class Param:
    name: str
    kind: str  # "param", "extra" or "skip"
    description: str
    modifiers: list[str]
    section: str | None
    line: int

    def where(self) -> str:
        return f"values.yaml:{self.line}: @{self.kind} {self.name}"


@dataclass
class Section:
    name: str
    description: list[str] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)


def parse_metadata(text: str) -> tuple[list[Section], list[Param]]:
    sections: list[Section] = []
    params: list[Param] = []
    current: Section | None = None
    in_description = False
    for number, line in enumerate(text.splitlines(), start=1):
        found = None
        if m := PARAM_RE.match(line):
            found = Param(m[1], "param", m[3], _modifiers(m[2]), None, number)
        if m := SECTION_RE.match(line):
            current = Section(m[1])
            sections.append(current)
        if current and in_description and DESCRIPTION_END_RE.match(line):
            in_description = False
        if current and in_description and (m := DESCRIPTION_CONTENT_RE.match(line)):
            current.description.append(m[1])
        if current and not in_description and (m := DESCRIPTION_START_RE.match(line)):
            in_description = True
            if m[1]:
                current.description.append(m[1])
        if m := SKIP_RE.match(line):
            found = Param(m[1], "skip", m[2], [], None, number)
        if m := EXTRA_RE.match(line):
            found = Param(m[1], "extra", m[3], _modifiers(m[2]), None, number)
        if found:
            if current:
                found.section = current.name
                current.params.append(found)
            params.append(found)
    return sections, params


def _modifiers(group: str | None) -> list[str]:
    if not group:
        return []
    return [m.strip() for m in group[1:-1].split(",") if m.strip()]


# --------------------------------------------------------------------------------------------
# values.yaml flattened into dotted keys, as the generator flattens it (dot-object: `a.b`,
# `a[0].b`; empty mappings/lists are leaves; a list of strings is one leaf).
# --------------------------------------------------------------------------------------------


def flatten(values: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """(leaves, nodes): leaf key -> value, and every addressable key (leaves and the mappings
    and lists above them) -> value."""
    leaves: dict[str, Any] = {}
    nodes: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if path:
            nodes[path] = value
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                walk(sub, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list) and value and not all(isinstance(e, str) for e in value):
            for index, sub in enumerate(value):
                walk(sub, f"{path}[{index}]")
        else:
            leaves[path] = value

    walk(values, "")
    return leaves, nodes


def covers(param: Param, key: str) -> bool:
    return key == param.name or key.startswith((f"{param.name}.", f"{param.name}["))


def js_string(value: Any) -> str:
    """A value as the generator's table shows it (JavaScript string conversion, JSON for
    mappings and lists, `""` for the empty string, `nil` for null)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    raise TypeError(f"no README rendering for a {type(value).__name__} value: {value!r}")


def shown_value(param: Param, nodes: dict[str, Any]) -> str:
    """The Value cell of a parameter row (lib/builder.js applyModifiers, lib/render.js)."""
    if param.kind == "extra":
        return ""
    value: Any = nodes.get(param.name)
    nullable_last = bool(param.modifiers) and param.modifiers[-1] == "nullable"
    for modifier in param.modifiers:
        if modifier in ("array", "object", "string") and not nullable_last:
            value = {"array": "[]", "object": "{}", "string": '""'}[modifier]
        elif modifier.startswith("default:"):
            value = re.sub(r"^default:\s*", "", modifier)
    return f"`{js_string(value)}`"


@pytest.fixture(scope="module")
def metadata() -> tuple[list[Section], list[Param]]:
    return parse_metadata(VALUES.read_text())


@pytest.fixture(scope="module")
def flat() -> tuple[dict[str, Any], dict[str, Any]]:
    return flatten(yaml.safe_load(VALUES.read_text()))


# --------------------------------------------------------------------------------------------
# (a) Every value has exactly one @param, every @param names a value
# --------------------------------------------------------------------------------------------


def test_every_value_has_exactly_one_param(metadata, flat):
    _, params = metadata
    leaves, nodes = flat
    problems = []
    seen: dict[str, Param] = {}
    for p in params:
        if p.name in seen:
            problems.append(f"{p.where()}: also documented at line {seen[p.name].line}")
        seen[p.name] = p
        if p.section is None:
            problems.append(f"{p.where()}: comes before any `## @section` (not rendered)")
        if p.kind != "skip" and not p.description.strip():
            problems.append(f"{p.where()}: has no description")
        if "|" in p.description:
            problems.append(f"{p.where()}: a `|` in the description breaks the README table")
        for modifier in p.modifiers:
            if modifier not in SIMPLE_MODIFIERS and not modifier.startswith("default:"):
                problems.append(f"{p.where()}: unknown modifier {modifier!r}")
        if p.kind == "extra":
            if p.name in nodes:
                problems.append(f"{p.where()}: the key exists in values.yaml, use @param")
            continue
        if p.name not in nodes:
            problems.append(f"{p.where()}: no such key in values.yaml")
            continue
        if p.kind == "param" and p.name not in leaves:
            # A mapping or list documented as one parameter: the README must show its default.
            defaults = [m for m in p.modifiers if m.startswith("default:")]
            actual = nodes[p.name]
            if not defaults:
                problems.append(
                    f"{p.where()}: documents a non-empty mapping/list as one parameter; add "
                    f"[default: {js_string(actual)}] or document each of its keys"
                )
            else:
                text = re.sub(r"^default:\s*", "", defaults[-1])
                try:
                    shown = json.loads(text)
                except json.JSONDecodeError:
                    shown = text
                if shown != actual:
                    problems.append(
                        f"{p.where()}: [default: {text}] is not the default {js_string(actual)}"
                    )
    for key in leaves:
        documented = [p for p in params if p.kind != "extra" and covers(p, key)]
        if not documented:
            problems.append(f"values.yaml: {key} has no `## @param {key} ...` (or @skip)")
        elif len(documented) > 1:
            names = ", ".join(p.where() for p in documented)
            problems.append(f"values.yaml: {key} is documented more than once: {names}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# (b) README.md holds the tables the generator writes from the current comments and values
# --------------------------------------------------------------------------------------------


def expected_tables(sections: list[Section], nodes: dict[str, Any]) -> list[tuple]:
    """[(section, description lines, [(Name, Description, Value)])], lib/render.js's content."""
    return [
        (
            s.name,
            [line for line in s.description if line.strip()],
            [
                (f"`{p.name}`", p.description.strip(), shown_value(p, nodes))
                for p in s.params
                if p.kind != "skip"
            ],
        )
        for s in sections
    ]


def readme_tables(text: str) -> list[tuple]:
    """The README's parameter section, parsed back into the same shape (cell padding aside)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^(##+) Parameters", line)]
    assert len(starts) == 1, f"README.md needs exactly one `## Parameters` heading; {REGENERATE}"
    signs = re.match(r"^(##+)", lines[starts[0]])[1]
    block = []
    for line in lines[starts[0] + 1 :]:
        if re.match(rf"^{signs}\s", line):
            break
        block.append(line)
    table_lines = [i for i, line in enumerate(block) if line.startswith("|")]
    block = block[: table_lines[-1] + 1] if table_lines else []
    tables: list[tuple] = []
    for line in block:
        if m := re.match(rf"^{signs}# (.*)$", line):
            tables.append((m[1], [], []))
        elif line.startswith("|"):
            cells = tuple(c.strip() for c in line.strip().strip("|").split("|"))
            if cells == ("Name", "Description", "Value") or all(
                re.fullmatch(r":?-+:?", c) for c in cells
            ):
                continue
            assert tables, f"README.md: a table row before any section heading: {line}"
            tables[-1][2].append(cells)
        elif line.strip():
            assert tables, f"README.md: text before any section heading: {line}"
            tables[-1][1].append(line)
    return tables


def test_readme_is_current(metadata, flat):
    sections, _ = metadata
    _, nodes = flat
    expected = expected_tables(sections, nodes)
    actual = readme_tables(README.read_text())
    if actual == expected:
        return
    want = {row[0]: (name, row) for name, _, rows in expected for row in rows}
    have = {row[0]: (name, row) for name, _, rows in actual for row in rows}
    problems = []
    for key, (section, row) in want.items():
        if key not in have:
            problems.append(f"missing row for {key} (section {section!r}): {row}")
        elif have[key] != (section, row):
            problems.append(
                f"outdated row for {key}: README has {have[key]}, wants {(section, row)}"
            )
    for key in have.keys() - want.keys():
        problems.append(f"README documents {key}, which values.yaml no longer has (or documents)")
    if not problems:
        problems.append(
            "sections, their order or their descriptions differ: README has "
            f"{[(s, d) for s, d, _ in actual]}, wants {[(s, d) for s, d, _ in expected]}"
        )
    pytest.fail(f"helm/moss-audio/README.md is stale; {REGENERATE}.\n" + "\n".join(problems))


def test_readme_introduces_the_chart():
    text = README.read_text()
    intro = text.split("## Parameters", 1)[0]
    assert "helm install" in intro
    assert "docs/deploy.md" in intro
    assert (CHART / "../../docs/deploy.md").resolve().is_file()


# --------------------------------------------------------------------------------------------
# (c) values.schema.json describes every property
# --------------------------------------------------------------------------------------------


def schema_properties(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (path, schema) under a `properties` keyword, in definitions and items too."""
    found = []
    if isinstance(node, list):
        for index, sub in enumerate(node):
            found += schema_properties(sub, f"{path}[{index}]")
    elif isinstance(node, dict):
        for key, sub in node.items():
            if key == "properties" and isinstance(sub, dict):
                for name, prop in sub.items():
                    where = f"{path}.{name}" if path else name
                    found.append((where, prop))
                    found += schema_properties(prop, where)
            elif key == "definitions" and isinstance(sub, dict):
                for name, definition in sub.items():
                    found += schema_properties(definition, f"#/definitions/{name}")
            else:
                found += schema_properties(sub, f"{path}<{key}>" if key != "items" else path)
    return found


def test_every_schema_property_has_a_description():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    properties = schema_properties(schema)
    assert len(properties) > 100
    undocumented = [
        path
        for path, prop in properties
        if not (isinstance(prop.get("description"), str) and prop["description"].strip())
    ]
    assert not undocumented, f"values.schema.json: properties without a description: {undocumented}"


def test_schema_accepts_the_documented_defaults(flat):
    """The schema describes values.yaml: its defaults validate, key for key."""
    _loaded_chart().validate_schema({})
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load(VALUES.read_text()))


# --------------------------------------------------------------------------------------------
# (d) _validate.tpl reports every problem at once
# --------------------------------------------------------------------------------------------


def render_error(values: dict) -> str:
    with pytest.raises(helm_python.HelmRenderError) as failure:
        _loaded_chart().render(values, name=RELEASE, namespace=NAMESPACE)
    return str(failure.value)


def test_two_independent_problems_are_reported_together():
    message = render_error(
        {
            "redis": {"enabled": False},
            "gateway": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}},
        }
    )
    lines = message.splitlines()
    assert "2 problem(s)" in lines[0], message
    assert "- redis.enabled=false needs redis.external.url or redis.external.existingSecret" in (
        lines
    ), message
    assert "- gateway.autoscaling.minReplicas must not exceed maxReplicas" in lines, message


def test_every_check_reports_in_one_failure():
    values = {
        "postgresql": {"enabled": False},
        "redis": {"enabled": False},
        "minio": {"enabled": False},
        "inference": {"backend": "kserve"},
        "kserve": {
            "deploymentMode": "RawDeployment",
            "encoder": {"enabled": False},
            "generator": {"canaryTrafficPercent": 10},
        },
        "workers": {
            "encode": {"keda": {"enabled": True}},
            "generate": {"keda": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}},
        },
        "gateway": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}},
    }
    expected = [
        "postgresql.enabled=false needs postgresql.external.url or "
        "postgresql.external.existingSecret",
        "mlflow.enabled with postgresql.enabled=false needs postgresql.external.mlflowUrl "
        "(MLflow's own database) or postgresql.external.existingSecret",
        "redis.enabled=false needs redis.external.url or redis.external.existingSecret",
        "minio.enabled=false needs s3.external.endpoint (host:port of the S3 API)",
        "minio.enabled=false needs s3.external.accessKey and s3.external.secretKey, "
        "or s3.external.existingSecret",
        "inference.backend=kserve without the in-cluster encoder predictor (kserve.enabled / "
        "kserve.encoder.enabled) needs inference.kserve.encoderUrl",
        "kserve.generator.canaryTrafficPercent needs kserve.deploymentMode=Serverless (canary "
        "rollouts are a Knative feature; got RawDeployment): unset it or switch the mode",
        "workers.encode.keda.enabled with an external Redis needs redis.external.address "
        "(host:port for KEDA's redis scaler)",
        "workers.generate.keda.enabled with an external Redis needs redis.external.address "
        "(host:port for KEDA's redis scaler)",
        "workers.generate.keda.minReplicas must not exceed maxReplicas",
        "gateway.autoscaling.minReplicas must not exceed maxReplicas",
    ]
    message = render_error(values)
    lines = message.splitlines()
    assert f"{len(expected)} problem(s) with the values:" in lines[0], message
    assert lines[1:] == [f"- {m}" for m in expected], message
