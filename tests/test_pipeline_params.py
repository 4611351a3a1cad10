"""nextflow_schema.json and the pre-flight that checks a run's parameters against it (`atlaspatch check-params`)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

from atlaspatch.errors import ConfigError
from atlaspatch.preflight import check_params, declared_params
from conftest import REPO, run_atlaspatch

SCHEMA = json.loads((REPO / "nextflow_schema.json").read_text())
NEXTFLOW = REPO / "tools" / "nextflow" / "nextflow"
GOOD = {"input": "slides/", "outdir": "results", "patch_size": 224, "target_mag": 20}


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {ref["$ref"].split("/")[-1] for ref in SCHEMA["allOf"]} == set(SCHEMA["$defs"])


def config_params(tmp_path: Path, *profile: str) -> dict[str, object]:
    """params as the real Nextflow config parser resolves them (`nextflow config -flat`)."""
    if not list((REPO / ".nextflow-lib").glob("nextflow-*.jar")):
        pytest.skip("no Nextflow runtime in .nextflow-lib/: run tools/nextflow/install.sh")
    args = [str(NEXTFLOW), "config", "-flat", *(["-profile", ",".join(profile)] if profile else []), str(REPO)]
    env = {**os.environ, "NXF_HOME": str(tmp_path / ".nxf")}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    values: dict[str, object] = {}
    for line in result.stdout.splitlines():
        if line.startswith("params."):
            name, _, value = line[len("params.") :].partition(" = ")
            values[name] = (
                None if value == "null" else ast.literal_eval(value.replace("true", "True").replace("false", "False"))
            )
    return values


def test_every_config_parameter_is_declared_with_its_default(tmp_path: Path) -> None:
    params = config_params(tmp_path)
    declared = declared_params(SCHEMA)
    profile_only = {"config_profile_name", "config_profile_description"}  # set by -profile test
    assert sorted(params) == sorted(set(declared) - profile_only)
    for name, value in params.items():
        if "default" in declared[name]:
            assert declared[name]["default"] == value, name
        elif name != "trace_report_suffix":
            assert value is None, f"{name} has a default in nextflow.config but not in the schema"


def test_the_test_profile_passes_the_preflight(tmp_path: Path) -> None:
    check_params(config_params(tmp_path, "test"), SCHEMA)


def test_good_parameters_pass() -> None:
    check_params({**GOOD, "slide_encoders": "prism,moozy", "tissue_thresh": 0.5, "step_size": None}, SCHEMA)
    check_params({**GOOD, "patch_encoders": "uni_v1,conch_v15"}, SCHEMA)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"segmentr": "otsu"}, "--segmentr is not a parameter of this pipeline (did you mean --segmenter?)"),
        ({"patch-size": 224, "patchSize": 224}, "--patch-size is not a parameter: write --patch_size"),
        ({"patch_size": "224"}, "--patch_size '224' must be an integer"),
        ({"tissue_thresh": 1.5}, "--tissue_thresh 1.5 must be <= 1"),
        ({"feature_precision": "float8"}, "--feature_precision 'float8' must be one of float32, float16, bfloat16"),
        ({"device": "gpu"}, "--device 'gpu' has the wrong form"),
        ({"fast_mode": "yes"}, "--fast_mode 'yes' must be true or false"),
        ({"slide_encoders": "titan,prism", "patch_size": 512}, "run `--slide_encoders titan --patch_size 512`"),
        ({"slide_encoders": "moozy", "target_mag": 40}, "pass --allow_mag_mismatch"),
        ({"slide_encoders": "mean-nope"}, "'nope' is not a patch encoder"),
        ({"patch_encoders": "uni_v1,uni_v3"}, "unknown patch encoder 'uni_v3'"),
    ],
)
def test_bad_parameters_are_one_clear_line(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_params({**GOOD, **extra}, SCHEMA)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_missing_required_parameters() -> None:
    with pytest.raises(ConfigError, match="--patch_size is required"):
        check_params({"input": "x", "outdir": "y", "target_mag": 20}, SCHEMA)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        check_params({**GOOD, "segmentr": "otsu", "tissue_thresh": 3, "device": "gpu"}, SCHEMA)
    assert str(caught.value).count(";") == 2


def test_check_params_command(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(GOOD))
    bad.write_text(json.dumps({**GOOD, "segmentr": "otsu"}))
    result = run_atlaspatch("check-params", good, "--schema", REPO / "nextflow_schema.json")
    assert result.returncode == 0 and "parameters OK" in result.stdout, result.stderr
    result = run_atlaspatch("check-params", bad, "--schema", REPO / "nextflow_schema.json")
    assert result.returncode == 2 and result.stderr.startswith("Error: invalid pipeline parameters: --segmentr")


INPUT_SCHEMA = json.loads((REPO / "assets" / "schema_input.json").read_text())


def test_the_example_samplesheet_is_valid(slides_dir: Path) -> None:
    from atlaspatch.preflight import samplesheet_errors

    assert samplesheet_errors(REPO / "assets" / "samplesheet.csv", INPUT_SCHEMA) == []


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("id,slide,mpp\na,x.svs,\nb,y.svs,0.5\n", []),
        ("id,slide\n,x.svs\n", ["row 2 id: id must start"]),
        ("id,slide,mpp\na,x.svs,fast\n", ["row 2 mpp: mpp must be a positive number"]),
        ("id,slide\na,x.svs\na,y.svs\n", ["id 'a' is used by more than one row"]),
        ("slide\nx.svs\n", ["row 2: 'id' is a required property"]),
        ("id,slide,stain\na,x.svs,HE\n", ["row 2: Additional properties are not allowed ('stain' was unexpected)"]),
    ],
)
def test_samplesheet_rows(tmp_path: Path, text: str, problems: list[str]) -> None:
    from atlaspatch.preflight import samplesheet_errors

    sheet = tmp_path / "sheet.csv"
    sheet.write_text(text)
    found = samplesheet_errors(sheet, INPUT_SCHEMA)
    assert len(found) == len(problems), found
    for problem, message in zip(problems, found, strict=True):
        assert message.startswith("samplesheet sheet.csv ") and problem in message, message


def test_missing_slides_with_a_root(tmp_path: Path) -> None:
    from atlaspatch.preflight import samplesheet_errors

    sheet = tmp_path / "sheet.csv"
    sheet.write_text("id,slide\na,x.svs\n")
    (tmp_path / "x.svs").write_text("")
    assert samplesheet_errors(sheet, INPUT_SCHEMA, tmp_path) == []
    sheet.write_text("id,slide\na,y.svs\n")
    assert samplesheet_errors(sheet, INPUT_SCHEMA, tmp_path) == [
        "samplesheet sheet.csv row 2: slide y.svs does not exist"
    ]
