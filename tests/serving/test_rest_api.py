"""The REST contract of TensorFlow Serving (docs: /work/shared/tf_serving_api.md), quirks included."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import serving_models as models

JSON = "application/json"


def error(response) -> str:
    assert response.headers["Content-Type"] == JSON
    body = response.json()
    assert list(body) == ["error"]
    return body["error"]


# ------------------------------------------------------------------------------------------------ status
def test_status_reports_versions_as_strings(main_server):
    response = main_server.get("/v1/models/penguins")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSON
    assert response.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_status_lists_every_version_newest_first(main_server):
    body = main_server.get("/v1/models/half_plus_two").json()
    assert [(v["version"], v["state"]) for v in body["model_version_status"]] == [
        ("2", "AVAILABLE"), ("1", "AVAILABLE")]


def test_status_of_one_version(main_server):
    body = main_server.get("/v1/models/half_plus_two/versions/1").json()
    assert [v["version"] for v in body["model_version_status"]] == ["1"]


def test_status_ignores_labels_even_unknown_ones(main_server):
    for label in ("stable", "no-such-label"):
        response = main_server.get(f"/v1/models/half_plus_two/labels/{label}")
        assert response.status_code == 200
        assert [v["version"] for v in response.json()["model_version_status"]] == ["2", "1"]


@pytest.mark.parametrize("path,code,message", [
    ("/v1/models/nope", 404, "Could not find any versions of model nope"),
    ("/v1/models/half_plus_two/versions/9", 404, "Could not find version 9 of model half_plus_two"),
    ("/v1/models", 400, "Missing model name in request."),
])
def test_status_errors(main_server, path, code, message):
    response = main_server.get(path)
    assert response.status_code == code
    assert error(response) == message


# ---------------------------------------------------------------------------------------------- metadata
def test_metadata_has_doubled_signature_def_and_string_sizes(main_server):
    response = main_server.get("/v1/models/half_plus_two/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "2"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "double", "int_times_two", "__saved_model_init_op"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["x"]["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}],
                                                      "unknown_rank": False}
    assert default["outputs"]["y"]["dtype"] == "DT_FLOAT"
    assert signatures["__saved_model_init_op"]["outputs"]["__saved_model_init_op"]["dtype"] == "DT_INVALID"


def test_metadata_follows_version_and_label(main_server):
    assert main_server.get("/v1/models/half_plus_two/versions/1/metadata").json()["model_spec"]["version"] == "1"
    assert main_server.get("/v1/models/half_plus_two/labels/stable/metadata").json()["model_spec"]["version"] == "1"
    assert main_server.get("/v1/models/half_plus_two/labels/canary/metadata").json()["model_spec"]["version"] == "2"


@pytest.mark.parametrize("path,code,message", [
    ("/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/half_plus_two/versions/7/metadata", 404,
     "Servable not found for request: Specific(half_plus_two, 7)"),
    ("/v1/models/half_plus_two/labels/nope/metadata", 400, "Unrecognized servable version label: nope"),
])
def test_metadata_errors(main_server, path, code, message):
    response = main_server.get(path)
    assert response.status_code == code
    assert error(response) == message


# ---------------------------------------------------------------------------------------------- predict
@pytest.mark.parametrize("path,expected", [
    ("/v1/models/half_plus_two/versions/1:predict", [2.5, 3.0, 4.5]),
    ("/v1/models/half_plus_two/labels/stable:predict", [2.5, 3.0, 4.5]),
    ("/v1/models/half_plus_two/labels/canary:predict", [3.5, 4.0, 5.5]),
    ("/v1/models/half_plus_two:predict", [3.5, 4.0, 5.5]),  # latest = 2
])
def test_predict_single_output_rows_are_bare_values(main_server, path, expected):
    response = main_server.post(path, {"instances": [1, 2.0, 5]})  # integers are fine for DT_FLOAT
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSON
    assert response.json() == {"predictions": expected}


def test_predict_columnar_single_output_is_bare_list(main_server):
    response = main_server.post("/v1/models/half_plus_two/versions/1:predict", {"inputs": [1.0, 2.0]})
    assert response.json() == {"outputs": [2.5, 3.0]}


def test_predict_columnar_object_ignores_extra_keys(main_server):
    response = main_server.post("/v1/models/half_plus_two/versions/1:predict",
                                {"inputs": {"x": [1.0], "not_an_input": [1, 2, 3]}})
    assert response.json() == {"outputs": [2.5]}


def test_predict_named_rows_work_for_a_single_input(main_server):
    response = main_server.post("/v1/models/half_plus_two/versions/1:predict",
                                {"instances": [{"x": 1.0}, {"x": 3}]})
    assert response.json() == {"predictions": [2.5, 3.5]}


def test_predict_signature_name(main_server):
    response = main_server.post("/v1/models/half_plus_two:predict",
                                {"signature_name": "double", "instances": [1.0, 4.0]})
    assert response.json() == {"predictions": [2.0, 8.0]}


def test_predict_whole_numbers_keep_decimal_point_and_non_finite_tokens(main_server):
    response = main_server.post("/v1/models/half_plus_two/versions/1:predict",
                                b'{"instances": [0, 1e6, NaN, Infinity, -Infinity]}')
    assert response.status_code == 200
    assert response.text == '{"predictions": [2.0, 500002.0, NaN, Infinity, -Infinity]}'


def test_predict_float_formatting_uses_six_then_nine_digits(main_server):
    response = main_server.post("/v1/models/half_plus_two:predict",
                                {"signature_name": "double", "instances": [0.05, 0.1234567]})
    assert response.text == '{"predictions": [0.1, 0.246913403]}'


def test_predict_int_signature_prints_ints(main_server):
    response = main_server.post("/v1/models/half_plus_two:predict",
                                {"signature_name": "int_times_two", "instances": [1, -3]})
    assert response.text == '{"predictions": [2, -6]}'


def test_predict_two_outputs_rows_are_objects(main_server):
    rows = [{"bill_length_mm": 39.1, "island": "Biscoe"}, {"bill_length_mm": 50, "island": "Dream"}]
    response = main_server.post("/v1/models/penguins:predict", {"instances": rows})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [sorted(p) for p in predictions] == [["classes", "probabilities"]] * 2
    assert [p["classes"] for p in predictions] == [models.CLASS_NAMES] * 2
    expected = models.penguins_expected([39.1, 50], ["Biscoe", "Dream"], version=1)
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected, rtol=1e-6)


def test_predict_two_outputs_columnar_is_object(main_server):
    response = main_server.post("/v1/models/penguins:predict",
                                {"inputs": {"bill_length_mm": [39.1], "island": ["Torgersen"]}})
    outputs = response.json()["outputs"]
    assert sorted(outputs) == ["classes", "probabilities"]
    assert outputs["classes"] == [models.CLASS_NAMES]
    np.testing.assert_allclose(outputs["probabilities"],
                               models.penguins_expected([39.1], ["Torgersen"], 1), rtol=1e-6)


def test_predict_accepts_b64_strings_and_missing_values(main_server):
    b64 = base64.b64encode(b"Biscoe").decode()
    response = main_server.post("/v1/models/penguins:predict", b'{"instances": ['
                                b'{"bill_length_mm": NaN, "island": {"b64": "' + b64.encode() + b'"}},'
                                b'{"bill_length_mm": 1, "island": ""}]}')
    assert response.status_code == 200
    got = [p["probabilities"] for p in response.json()["predictions"]]
    np.testing.assert_allclose(got, models.penguins_expected([float("nan"), 1.0], ["Biscoe", ""], 1), rtol=1e-6)


# ------------------------------------------------------------------------------------- predict errors
PREDICT_ERRORS = [
    # (name, path, body, status, exact error message)
    ("empty body", "half_plus_two", b"", 400, "JSON Parse error: The document is empty"),
    ("bad json", "half_plus_two", b"{bad", 400, "JSON Parse error: Missing a name for object member. at offset: 1"),
    ("bad value", "half_plus_two", b'{"instances": [1,]}', 400, "JSON Parse error: Invalid value. at offset: 17"),
    ("top level not object", "half_plus_two", b"[1, 2]", 400, "JSON Value: [\n    1,\n    2\n] Is not object"),
    ("signature_name not string", "half_plus_two", {"signature_name": 5, "instances": [1]}, 400,
     'JSON Value: {\n    "signature_name": 5,\n    "instances": [\n        1\n    ]\n} not formatted correctly. '
     "'signature_name' key must be a string value."),
    ("unknown model", "nope", {"instances": [1]}, 404, "Servable not found for request: Latest(nope)"),
    ("unknown version", "half_plus_two/versions/99", {"instances": [1]}, 404,
     "Servable not found for request: Specific(half_plus_two, 99)"),
    ("unknown label", "half_plus_two/labels/nope", {"instances": [1]}, 400,
     "Unrecognized servable version label: nope"),
    ("unknown signature", "half_plus_two", {"signature_name": "nope", "instances": [1]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("both keys", "half_plus_two", {"instances": [1], "inputs": [1]}, 400,
     'JSON Value: {\n    "instances": [\n        1\n    ],\n    "inputs": [\n        1\n    ]\n} Not formatted '
     "correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    ("neither key", "half_plus_two", {"rows": [1]}, 400, "Missing 'inputs' or 'instances' key"),
    ("instances not a list", "half_plus_two", {"instances": 5}, 400,
     "JSON Value: {\n    \"instances\": 5\n} Excepting 'instances' to be an list/array"),
    ("instances empty", "half_plus_two", {"instances": []}, 400,
     "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
    ("string for float", "half_plus_two", {"instances": ["x", "y"]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"x\" Type: String "
     "is not of expected type: float"),
    ("bool for float", "half_plus_two", {"instances": [1.0, True]}, 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: true Type: True "
     "is not of expected type: float"),
    ("null for float", "half_plus_two", {"instances": [None]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: null Type: Null "
     "is not of expected type: float"),
    ("lossy int for float", "half_plus_two", {"instances": [16777217]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Cannot convert JSON value: "
     "16777217 to float without loss of precision."),
    ("fraction for int", "half_plus_two", {"signature_name": "int_times_two", "instances": [1, 1.5]}, 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 1.5 Type: Number "
     "is not of expected type: int64"),
    ("ragged rows", "half_plus_two", {"instances": [[1, 2], [3]]}, 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but "
     "got: 1"),
    ("ragged inside a row", "half_plus_two", {"instances": [[[1, 2], [3]]]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Encountered list at unexpected "
     "size: 1 at level: 1 expected size: 2"),
    ("object after value", "half_plus_two", {"instances": [1, {"x": 2}]}, 400,
     "Expecting value/list but got object at item 1 of input list"),
    ("value after object", "half_plus_two", {"instances": [{"x": 2}, 1]}, 400,
     "Expecting object but got list at item 1 of input list"),
    ("plain list for two inputs", "penguins", {"instances": [1.0]}, 400,
     "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
     "tensorinfo_map"),
    ("missing named input in row", "penguins", {"instances": [{"bill_length_mm": 1.0}]}, 400,
     "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"bill_length_mm\": 1.0\n} keys "
     "must be equal to: bill_length_mm,island"),
    ("unknown named input in row", "penguins",
     {"instances": [{"bill_length_mm": 1.0, "island": "Biscoe", "foo": 1}]}, 400,
     "Failed to process element: 0 key: foo of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does "
     "not have named input: foo"),
    ("string input given a number", "penguins", {"instances": [{"bill_length_mm": 1.0, "island": 3}]}, 400,
     "Failed to process element: 0 key: island of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 3 "
     "Type: Number is not of expected type: string"),
    ("bad b64", "penguins", {"instances": [{"bill_length_mm": 1.0, "island": {"b64": "%%%"}}]}, 400,
     "Failed to process element: 0 key: island of 'instances' list. Error: INVALID_ARGUMENT: Unable to base64 "
     "decode"),
    ("columnar missing input", "penguins", {"inputs": {"island": ["Biscoe"]}}, 400,
     "Missing named input: bill_length_mm in 'inputs' object."),
    ("columnar plain for two inputs", "penguins", {"inputs": [1.0]}, 400,
     "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
     "tensorinfo_map"),
    ("classify on a predict signature", "half_plus_two", None, 400,
     "Expected classification signature method_name to be tensorflow/serving/classify. "
     "Was: tensorflow/serving/predict"),
]


@pytest.mark.parametrize("name,model,body,status,message", PREDICT_ERRORS, ids=[e[0] for e in PREDICT_ERRORS])
def test_predict_errors(main_server, name, model, body, status, message):
    if body is None:  # classify through the predict-only model
        response = main_server.post(f"/v1/models/{model}:classify", {"examples": [{"x": 1.0}]})
    else:
        response = main_server.post(f"/v1/models/{model}:predict", body)
    assert response.status_code == status
    assert error(response) == message


def test_predict_shape_is_not_checked_against_the_signature(main_server):
    # Like the real server: a [1, 2] tensor for a [-1] input reaches the graph, which broadcasts it.
    response = main_server.post("/v1/models/half_plus_two/versions/1:predict", {"instances": [[1.0, 2.0]]})
    assert response.json() == {"predictions": [[2.5, 3.0]]}


def test_predict_shape_the_graph_rejects_is_400(main_server):
    response = main_server.post("/v1/models/penguins:predict",
                                {"inputs": {"bill_length_mm": [[1.0, 2.0]], "island": ["Biscoe"]}})
    assert response.status_code == 400
    message = error(response)
    assert message.startswith("Incompatible shapes: [1,3] vs. [1,3,2]")
    assert "Graph execution error" not in message and "[Op:" not in message


def test_error_body_is_pretty_printed_single_key(main_server):
    response = main_server.post("/v1/models/half_plus_two:predict", {"rows": []})
    assert response.text == '{\n    "error": "Missing \'inputs\' or \'instances\' key"\n}'


# ---------------------------------------------------------------------------------------------- routes
@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/foo"), ("POST", "/v1/foo"), ("GET", "/v1/models/half_plus_two:predict"),
    ("POST", "/v1/models/half_plus_two/metadata"), ("POST", "/v1/models/half_plus_two/versions/HELLO:regress"),
    ("POST", "/v1/models/half_plus_two/versions/50/labels/x:regress"), ("GET", "/v1/models/debug/model_name"),
    ("GET", "/v1/models/half_plus_two/"), ("POST", "/v1/models/half_plus_two:PREDICT"),
    ("PUT", "/v1/models/half_plus_two"), ("DELETE", "/v1/models/half_plus_two"),
    ("POST", "/v1/models/half_plus_two:explain"),
])
def test_unmatched_v1_routes_are_400_malformed(main_server, method, path):
    response = main_server.http.request(method, main_server.url + path, data=b"{}", timeout=30)
    assert response.status_code == 400
    assert error(response) == f"Malformed request: {method} {path}"


def test_v1_paths_are_case_insensitive(main_server):
    response = main_server.post("/V1/MODELS/half_plus_two/versions/1:predict", {"instances": [1.0]})
    assert response.json() == {"predictions": [2.5]}


@pytest.mark.parametrize("path", ["/", "/healthz", "/v2/models/half_plus_two"])
def test_paths_outside_v1_are_bare_html_404(main_server, path):
    response = main_server.get(path)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        response.json()


def test_version_that_does_not_fit_int64_is_400_with_empty_body(main_server):
    response = main_server.post("/v1/models/half_plus_two/versions/99999999999999999999:predict", {"instances": [1]})
    assert response.status_code == 400
    assert response.content == b""


def test_url_encoded_model_name_and_label(main_server):
    response = main_server.post("/v1/models/half%5Fplus%5Ftwo/labels/st%61ble:predict", {"instances": [1.0]})
    assert response.json() == {"predictions": [2.5]}


def test_body_over_the_limit_is_413(main_server):
    body = json.dumps({"instances": [1.0] * 400_000}).encode()  # > 1 MiB, the fixture's limit
    response = main_server.post("/v1/models/half_plus_two:predict", body)
    assert response.status_code == 413
    assert "exceeds the limit" in error(response)
    assert main_server.post("/v1/models/half_plus_two:predict", {"instances": [1.0]}).status_code == 200


# --------------------------------------------------------------------------------------- classify/regress
def test_regress_results(main_server):
    response = main_server.post("/v1/models/examples:regress",
                                {"signature_name": "regress_x", "examples": [{"x": 1.0}, {"x": [3.0]}]})
    assert response.status_code == 200
    assert response.json() == {"results": [2.5, 3.5]}


def test_classify_results_are_label_score_pairs(main_server):
    response = main_server.post("/v1/models/examples:classify",
                                {"signature_name": "classify_x", "examples": [{"x": 0.0}]})
    assert response.json() == {"results": [[["neg", 0.5], ["pos", 0.5]]]}


def test_classify_context_is_merged_into_examples(main_server):
    response = main_server.post("/v1/models/examples:regress",
                                {"signature_name": "regress_x", "context": {"x": 4.0}, "examples": [{}, {}]})
    assert response.json() == {"results": [4.0, 4.0]}


@pytest.mark.parametrize("body,message", [
    ({"signature_name": "regress_x"},
     "JSON Value: {\n    \"signature_name\": \"regress_x\"\n} When method is classify, key 'examples' is expected "
     "and was not found"),
    ({"signature_name": "regress_x", "examples": []},
     "JSON Value: {\n    \"signature_name\": \"regress_x\",\n    \"examples\": []\n} 'examples' value is an "
     "empty array"),
    ({"signature_name": "regress_x", "examples": [1]}, "Example must be JSON object but got JSON Number"),
    ({"signature_name": "regress_x", "examples": [{"x": [1.0, "a"]}]},
     "Unexpected element type in feature: x expecting type: float"),
    ({"signature_name": "regress_x", "examples": [{"x": None}]},
     "Feature: x has element with unexpected JSON type: Null"),
    ({"signature_name": "nope", "examples": [{"x": 1.0}]}, "No signature was found with the name: nope"),
    ({"signature_name": "classify_x", "examples": [{"x": 1.0}]},
     "Expected regression signature method_name to be tensorflow/serving/regress. "
     "Was: tensorflow/serving/classify"),
])
def test_regress_errors(main_server, body, message):
    response = main_server.post("/v1/models/examples:regress", body)
    assert response.status_code == 400
    assert error(response) == message
