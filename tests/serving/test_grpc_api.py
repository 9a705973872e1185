"""The gRPC contract with the official ``tensorflow-serving-api`` stubs."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import serving_models as models
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     predict_pb2, regression_pb2)


def penguins_request(lengths=(39.1, 50.0), islands=("Biscoe", "Dream"), **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", "penguins")
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["bill_length_mm"].CopyFrom(tf.make_tensor_proto(list(lengths), tf.float32))
    request.inputs["island"].CopyFrom(tf.make_tensor_proto(list(islands)))
    return request


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=60)
    return info.value


def test_predict_returns_typed_fields_and_model_spec(main_server):
    response = main_server.prediction_stub().Predict(penguins_request(), timeout=60)
    probabilities = response.outputs["probabilities"]
    assert probabilities.dtype == tf.float32.as_datatype_enum
    assert [d.size for d in probabilities.tensor_shape.dim] == [2, 3]
    assert probabilities.tensor_content == b"" and len(probabilities.float_val) == 6
    np.testing.assert_allclose(np.reshape(probabilities.float_val, (2, 3)),
                               models.penguins_expected([39.1, 50.0], ["Biscoe", "Dream"], 1), rtol=1e-6)
    assert list(response.outputs["classes"].string_val) == [c.encode() for c in models.CLASS_NAMES] * 2
    assert response.model_spec.name == "penguins"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_predict_tensor_content_inputs_and_output_filter(main_server):
    request = penguins_request()
    request.inputs["bill_length_mm"].CopyFrom(
        tf.make_tensor_proto(np.array([39.1, 50.0], np.float32)))  # tensor_content encoding
    request.output_filter.append("probabilities")
    response = main_server.prediction_stub().Predict(request, timeout=60)
    assert list(response.outputs) == ["probabilities"]


def test_predict_version_and_label(main_server):
    stub = main_server.prediction_stub()
    for spec, expected in [({}, 3.5), ({"version": 1}, 2.5), ({"version_label": "stable"}, 2.5),
                           ({"version_label": "canary"}, 3.5)]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        if "version" in spec:
            request.model_spec.version.value = spec["version"]
        if "version_label" in spec:
            request.model_spec.version_label = spec["version_label"]
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], tf.float32))
        response = stub.Predict(request, timeout=60)
        assert list(response.outputs["y"].float_val) == [expected]
        assert response.model_spec.version.value == (1 if expected == 2.5 else 2)


GRPC_ERRORS = [
    ("unknown model", penguins_request(name="nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    ("unknown version", penguins_request(version=42), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(penguins, 42)"),
    ("unknown label", penguins_request(version_label="nope"), grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: nope"),
    ("no model name", penguins_request(name=""), grpc.StatusCode.INVALID_ARGUMENT,
     "ModelSpec has no name specified."),
    ("unknown signature", penguins_request(signature_name="nope"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
]


@pytest.mark.parametrize("name,request_,code,message", GRPC_ERRORS, ids=[e[0] for e in GRPC_ERRORS])
def test_predict_lookup_errors(main_server, name, request_, code, message):
    err = rpc_error(main_server.prediction_stub().Predict, request_)
    assert (err.code(), err.details()) == (code, message)


def test_predict_missing_input(main_server):
    request = penguins_request()
    del request.inputs["island"]
    err = rpc_error(main_server.prediction_stub().Predict, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == ("input size does not match signature: 1!=2 len({bill_length_mm}) != "
                             "len({bill_length_mm,island}). Sent extra: {}. Missing but required: {island}.")


def test_predict_wrong_input_name(main_server):
    request = penguins_request()
    request.inputs["isle"].CopyFrom(request.inputs["island"])
    del request.inputs["island"]
    err = rpc_error(main_server.prediction_stub().Predict, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == ("Signature input alias: island(feed name: serving_default_island:0) not found in "
                             "request and no default value provided. Inputs expected to be in the request "
                             "{bill_length_mm,isle}, or default input alias set: ")


def test_predict_wrong_dtype(main_server):
    request = penguins_request()
    request.inputs["island"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], tf.float32))
    err = rpc_error(main_server.prediction_stub().Predict, request)
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           "Expects arg[1] to be string but float is provided")


@pytest.mark.parametrize("aliases,message", [
    (["nope"], "output tensor alias not found in signature: nope Outputs expected to be in the set "
               "{classes,probabilities}."),
    (["classes", "classes"], "duplicate output tensor alias: classes"),
])
def test_predict_output_filter_errors(main_server, aliases, message):
    request = penguins_request()
    request.output_filter.extend(aliases)
    err = rpc_error(main_server.prediction_stub().Predict, request)
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_message_over_the_limit_is_resource_exhausted(main_server):
    request = penguins_request(lengths=[1.0] * 300_000, islands=["Biscoe"] * 300_000)  # > 1 MiB
    err = rpc_error(main_server.prediction_stub().Predict, request)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_get_model_metadata(main_server):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    request.model_spec.version_label = "stable"
    response = main_server.prediction_stub().GetModelMetadata(request, timeout=60)
    assert response.model_spec.name == "half_plus_two" and response.model_spec.version.value == 1
    any_ = response.metadata["signature_def"]
    assert any_.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    any_.Unpack(signatures)
    assert signatures.signature_def["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum


@pytest.mark.parametrize("fields,message", [
    ([], "GetModelMetadataRequest must specify at least one metadata_field"),
    (["signature_def", "other"], "Metadata field other is not supported"),
])
def test_get_model_metadata_errors(main_server, fields, message):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = "half_plus_two"
    err = rpc_error(main_server.prediction_stub().GetModelMetadata, request)
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def _example(x: float) -> example_pb2.Example:
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(x)
    return example


def test_classify(main_server):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "examples"
    request.model_spec.signature_name = "classify_x"
    request.input.example_list.examples.extend([_example(0.0), _example(100.0)])
    response = main_server.prediction_stub().Classify(request, timeout=60)
    rows = [[(c.label, round(c.score, 4)) for c in item.classes] for item in response.result.classifications]
    assert rows == [[("neg", 0.5), ("pos", 0.5)], [("neg", 0.0), ("pos", 1.0)]]
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "classify_x"


def test_regress_with_context(main_server):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "examples"
    request.model_spec.signature_name = "regress_x"
    request.input.example_list_with_context.context.CopyFrom(_example(2.0))
    request.input.example_list_with_context.examples.extend([example_pb2.Example(), _example(6.0)])
    response = main_server.prediction_stub().Regress(request, timeout=60)
    assert [r.value for r in response.result.regressions] == [3.0, 5.0]


def test_regress_on_a_predict_signature_is_invalid_argument(main_server):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.input.example_list.examples.append(_example(1.0))
    err = rpc_error(main_server.prediction_stub().Regress, request)
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expected regression signature method_name to be tensorflow/serving/regress. Was: tensorflow/serving/predict")


def test_get_model_status(main_server):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.version_label = "no-such-label"  # ignored, as by the real server
    response = main_server.model_stub().GetModelStatus(request, timeout=60)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE), (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    assert all(s.status.error_code == 0 and s.status.error_message == "" for s in response.model_version_status)


@pytest.mark.parametrize("name,version,message", [
    ("nope", None, "Could not find any versions of model nope"),
    ("half_plus_two", 5, "Could not find version 5 of model half_plus_two"),
])
def test_get_model_status_not_found(main_server, name, version, message):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    err = rpc_error(main_server.model_stub().GetModelStatus, request)
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, message)
