"""The REST JSON contract of TensorFlow Serving: request bodies to tensors, tensors to response bodies.

Mirrors ``tensorflow_serving/util/json_tensor.cc`` message for message, because clients (and tests written
against the real server) match on the error text. Pure functions of Python/numpy values; no TensorFlow import.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import math
from typing import Any

import numpy as np

from pipeline.serving.errors import Code, ServingError, invalid

# tensorflow.DataType enum values and their DataTypeString() names.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_UINT16, DT_HALF, DT_UINT32, DT_UINT64 = 9, 10, 17, 19, 22, 23
DTYPE_NAMES: dict[int, str] = {
    0: "invalid", 1: "float", 2: "double", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128", 19: "half",
    20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
}
NUMPY_DTYPES: dict[int, Any] = {
    DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8, DT_INT16: np.int16,
    DT_INT8: np.int8, DT_STRING: object, DT_INT64: np.int64, DT_BOOL: np.bool_, DT_UINT16: np.uint16,
    DT_HALF: np.float16, DT_UINT32: np.uint32, DT_UINT64: np.uint64,
}

ROW, COLUMNAR = "row", "columnar"
_FLT_MAX = float(np.finfo(np.float32).max)
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)

# rapidjson's GetParseError_En texts, keyed by the CPython json message they correspond to.
_PARSE_ERRORS = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Extra data": "The document root must not be followed by other values.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}


# --------------------------------------------------------------------------------------------- JSON values
def json_type(val: Any) -> str:
    """rapidjson's type name of a parsed JSON value (``JsonTypeString``)."""
    if val is None:
        return "Null"
    if val is True:
        return "True"
    if val is False:
        return "False"
    if isinstance(val, dict):
        return "Object"
    if isinstance(val, list):
        return "Array"
    if isinstance(val, str):
        return "String"
    return "Number"


def json_value(val: Any) -> str:
    """A JSON value printed the way the real server quotes it in error messages (rapidjson PrettyWriter)."""
    if type(val) is float:
        as_float = float(np.float32(val)) if abs(val) <= _FLT_MAX or not math.isfinite(val) else None
        if as_float == val or (as_float is not None and math.isnan(val)):
            return format_float32(val)
        return format_float64(val)
    if isinstance(val, (dict, list)):
        return json.dumps(val, indent=4, ensure_ascii=False)
    return json.dumps(val, ensure_ascii=False)


def _write_decimal(val: float, digits: int, round_trips) -> str:
    """``WriteDecimal``: %g, widened to ``digits`` when that does not round-trip, ``.0`` on whole numbers,
    bare ``NaN``/``Infinity`` tokens."""
    if val != val:
        return "NaN"
    if val in (math.inf, -math.inf):
        return "Infinity" if val > 0 else "-Infinity"
    text = "%g" % val
    if not round_trips(text, val):
        text = "%.*g" % (digits, val)
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def format_float32(val: float) -> str:
    """A float32 as the real server prints it (6 significant digits, 9 when needed)."""
    return _write_decimal(val, 9, lambda text, v: np.float32(float(text)) == np.float32(v))


def format_float64(val: float) -> str:
    """A double as the real server prints it (6 significant digits, 17 when needed)."""
    return _write_decimal(val, 17, lambda text, v: float(text) == v)


def error_body(message: str) -> bytes:
    """The error envelope: exactly one key, pretty-printed as rapidjson does."""
    return ('{\n    "error": ' + json.dumps(message, ensure_ascii=False) + "\n}").encode()


def _bracket_context(text: str, pos: int) -> str:
    """The innermost open bracket (``[`` or ``{``) at ``pos``, to tell rapidjson's comma messages apart."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def parse_json(body: bytes) -> dict:
    """Parse a request body; rapidjson's error texts; the top level must be an object."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if not text.strip():
            message = "The document is empty."
        elif exc.msg == "Expecting ',' delimiter":
            inner = _bracket_context(text, exc.pos)
            message = ("Missing a comma or ']' after an array element." if inner == "["
                       else "Missing a comma or '}' after an object member.")
        else:
            message = _PARSE_ERRORS.get(exc.msg, "Invalid value.")
        raise invalid(f"JSON Parse error: {message} at offset: {exc.pos}") from None
    except RecursionError:
        raise invalid("JSON Parse error: Terminate parsing due to Handler error. at offset: 0") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {json_value(doc)} Is not object")
    return doc


def signature_name_of(doc: dict) -> str:
    """The optional ``signature_name`` ("" when absent)."""
    if "signature_name" not in doc:
        return ""
    name = doc["signature_name"]
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {json_value(doc)} not formatted correctly. "
                      "'signature_name' key must be a string value.")
    return name


# ------------------------------------------------------------------------------------- values to tensors
def _type_error(val: Any, dtype: int) -> ServingError:
    return invalid(f"JSON Value: {json_value(val)} Type: {json_type(val)} "
                   f"is not of expected type: {DTYPE_NAMES.get(dtype, str(dtype))}")


def _lossy(val: Any, target: str) -> ServingError:
    return invalid(f"Cannot convert JSON value: {json_value(val)} to {target} without loss of precision.")


def is_b64_object(val: Any) -> bool:
    return type(val) is dict and len(val) == 1 and isinstance(val.get("b64"), str)


def decode_b64(val: Any) -> bytes:
    if not is_b64_object(val):
        raise invalid(f"JSON Value: {json_value(val)} not formatted correctly for base64 data")
    text = val["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


@functools.lru_cache(maxsize=None)
def _converter(dtype: int):
    """A function checking and converting one JSON leaf for a signature dtype (``AddValueToTensor``); one per
    dtype, built once (building it per request was 6 µs a column)."""
    if dtype in (DT_FLOAT, DT_DOUBLE):
        max_int = 2**24 - 1 if dtype != DT_DOUBLE else 2**53 - 1
        target = "double" if dtype == DT_DOUBLE else "float"

        def to_float(val):
            kind = type(val)
            if kind is float:
                if dtype != DT_DOUBLE and math.isfinite(val) and not -_FLT_MAX <= val <= _FLT_MAX:
                    raise _lossy(val, target)
                return val
            if kind is int:
                if abs(val) > max_int:
                    raise _lossy(val, target)
                return val
            raise _type_error(val, dtype)
        return to_float
    bounds = {DT_INT32: _INT32, DT_INT16: _INT32, DT_INT8: _INT32, DT_UINT8: _INT32, DT_INT64: _INT64,
              DT_UINT32: (0, 2**32 - 1), DT_UINT64: (0, 2**64 - 1)}.get(dtype)
    if bounds is not None:
        low, high = bounds

        def to_int(val):
            if type(val) is not int or not low <= val <= high:
                raise _type_error(val, dtype)
            return val
        return to_int
    if dtype == DT_BOOL:
        def to_bool(val):
            if type(val) is not bool:
                raise _type_error(val, dtype)
            return val
        return to_bool
    if dtype == DT_STRING:
        def to_bytes(val):
            kind = type(val)
            if kind is str:
                return val.encode("utf-8")
            if kind is dict:
                return decode_b64(val)
            raise _type_error(val, dtype)
        return to_bytes

    def unsupported(val):
        raise ServingError(Code.UNIMPLEMENTED, f"Conversion of JSON Value: {json_value(val)} to type: "
                                               f"{DTYPE_NAMES.get(dtype, str(dtype))}")
    return unsupported


def dense_shape(val: Any) -> list[int]:
    """``GetDenseTensorShape``: the shape implied by following the first element of each nested list."""
    shape = []
    while type(val) is list:
        shape.append(len(val))
        if not val:
            break
        val = val[0]
    return shape


def _fill(val: Any, level: int, shape: list[int], conv, out: list) -> None:
    """``FillTensorProto``: append the leaves of ``val`` to ``out``, checking it is dense with ``shape``."""
    rank = len(shape)
    if type(val) is not list:
        if level != rank:
            raise invalid(f"JSON Value: {json_value(val)} found at incorrect level: {level + 1} "
                          f"in the JSON DOM. Expected at level: {rank}")
        out.append(conv(val))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(val) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(val)} at level: {level} "
                      f"expected size: {shape[level]}")
    if level == rank - 1:
        for item in val:
            if type(item) is list:
                raise invalid(f"Encountered list at unexpected level: {level + 1} expected < {rank}")
            out.append(conv(item))
        return
    for item in val:
        _fill(item, level + 1, shape, conv, out)


def _to_array(values: list, shape: list[int], dtype: int) -> np.ndarray:
    np_dtype = NUMPY_DTYPES.get(dtype, object)
    if np_dtype is object:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    return np.asarray(values, dtype=np_dtype).reshape(shape)


def value_to_tensor(val: Any, dtype: int) -> np.ndarray:
    """A whole JSON value (scalar or nested list) as one tensor of the signature's dtype."""
    shape = dense_shape(val)
    values: list = []
    _fill(val, 0, shape, _converter(dtype), values)
    return _to_array(values, shape, dtype)


def _status_string(exc: ServingError) -> str:
    # absl::Status::ToString(): "INVALID_ARGUMENT: message"
    return f"{exc.code.name}: {exc.message}"


def _instances_to_tensors(instances: list, input_dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInstancesList``: the row format, batched along a new dimension 0."""
    first = instances[0]
    if type(first) is not dict and len(input_dtypes) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                      "required as per tensorinfo_map")
    elements_are_objects = type(first) is dict and not is_b64_object(first)
    input_names = sorted(input_dtypes)
    converters = {name: _converter(dtype) for name, dtype in input_dtypes.items()}
    values: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add(item: Any, name: str) -> None:
        if name not in input_dtypes:
            raise invalid(f"JSON object: does not have named input: {name}")
        shape = dense_shape(item)
        out: list = []
        _fill(item, 0, shape, converters[name], out)
        if name not in sizes:
            sizes[name], shapes[name], values[name] = len(out), shape, out
            return
        if sizes[name] != len(out):
            raise invalid(f"Expecting tensor size: {sizes[name]} but got: {len(out)}")
        if shapes[name] != shape:
            raise invalid(f"Expecting shape [{','.join(map(str, shapes[name]))}] "
                          f"but got: [{','.join(map(str, shape))}]")
        values[name].extend(out)

    for index, element in enumerate(instances):
        is_object = type(element) is dict and not is_b64_object(element)
        if elements_are_objects:
            if not is_object:
                raise invalid(f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    add(item, name)
                except ServingError as exc:
                    raise invalid(f"Failed to process element: {index} key: {name} of 'instances' list. "
                                  f"Error: {_status_string(exc)}") from None
            if set(element) != set(input_names):
                raise invalid(f"Failed to process element: {index} of 'instances' list. JSON object: "
                              f"{json_value(element)} keys must be equal to: {','.join(input_names)}")
        else:
            if is_object:
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
            try:
                add(element, next(iter(input_dtypes)))
            except ServingError as exc:
                raise invalid(f"Failed to process element: {index} of 'instances' list. "
                              f"Error: {_status_string(exc)}") from None
    count = len(instances)
    return {name: _to_array(values[name], [count] + shapes[name], input_dtypes[name]) for name in values}


def _inputs_to_tensors(inputs: Any, input_dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInputsMap``: the columnar format; extra keys are ignored."""
    if type(inputs) is not dict or is_b64_object(inputs):
        if len(input_dtypes) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                          "required as per tensorinfo_map")
        name, dtype = next(iter(input_dtypes.items()))
        return {name: value_to_tensor(inputs, dtype)}
    tensors = {}
    for name in sorted(input_dtypes):
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = value_to_tensor(inputs[name], input_dtypes[name])
    return tensors


def predict_tensors(doc: dict, input_dtypes: dict[str, int], signature_name: str) -> tuple[str, dict]:
    """The predict request's tensors and its format (ROW or COLUMNAR), after the signature is resolved.

    Args:
        doc: the parsed request body.
        input_dtypes: the signature's input aliases and their ``DataType`` values.
        signature_name: as requested, for the empty-signature message.
    """
    if not input_dtypes:
        raise invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(f"JSON Value: {json_value(doc)} Not formatted correctly expecting only one of 'inputs' "
                      "or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if type(instances) is not list:
            # The real server's typo ("Excepting") is kept: clients match on this text.
            raise invalid(f"JSON Value: {json_value(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {json_value(doc)} No values in 'instances' array")
        return ROW, _instances_to_tensors(instances, input_dtypes)
    if has_inputs:
        return COLUMNAR, _inputs_to_tensors(doc["inputs"], input_dtypes)
    raise invalid("Missing 'inputs' or 'instances' key")


# ------------------------------------------------------------------------------------- tensors to JSON
def _leaf_writer(array: np.ndarray, alias: str):
    kind = array.dtype.kind
    if kind == "f":
        return format_float64 if array.dtype == np.float64 else format_float32
    if kind in "iu":
        return str
    if kind == "b":
        return lambda val: "true" if val else "false"
    if alias.endswith("_bytes"):
        return lambda val: '{"b64": "' + base64.b64encode(_as_bytes(val)).decode() + '"}'
    return lambda val: json.dumps(_as_bytes(val).decode("utf-8", "replace"), ensure_ascii=False)


def _as_bytes(val: Any) -> bytes:
    return val if isinstance(val, bytes) else str(val).encode()


def _write(value: Any, leaf) -> str:
    if type(value) is list:
        return "[" + ", ".join([_write(item, leaf) for item in value]) + "]"
    return leaf(value)


def tensor_json(array: np.ndarray, alias: str) -> str:
    """A whole tensor as nested JSON lists (scalars bare)."""
    return _write(array.tolist(), _leaf_writer(array, alias))


def predict_response(outputs: dict[str, np.ndarray], fmt: str) -> bytes:
    """``MakeRowFormatJsonFromTensors`` / ``MakeColumnarFormatJsonFromTensors``.

    One output drops its name (bare values); two or more are keyed by alias, in alias order.
    """
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            body = tensor_json(outputs[names[0]], names[0])
        else:
            body = "{" + ", ".join(json.dumps(n) + ": " + tensor_json(outputs[n], n) for n in names) + "}"
        return ('{"outputs": ' + body + "}").encode()
    batch = -1
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                          f"expecting: {batch}")
        batch = array.shape[0]
    columns = [(json.dumps(n) + ": ", array.tolist(), _leaf_writer(outputs[n], n))
               for n, array in ((n, outputs[n]) for n in names)]
    if len(columns) == 1:
        _, rows, leaf = columns[0]
        items = [_write(row, leaf) for row in rows]
    else:
        items = ["{" + ", ".join(key + _write(rows[i], leaf) for key, rows, leaf in columns) + "}"
                 for i in range(batch)]
    return ('{"predictions": [' + ", ".join(items) + "]}").encode()


# ------------------------------------------------------------------------------ classify / regress bodies
def _add_feature_value(val: Any, name: str, feature: dict) -> None:
    """``AddValueToFeature``: one JSON value into a feature ``{"kind": ..., "values": [...]}``."""
    def want(kind: str) -> None:
        if feature["kind"] not in (None, kind):
            raise invalid(f"Unexpected element type in feature: {name} expecting type: {feature['kind']}")
        feature["kind"] = kind

    kind = type(val)
    if val is None or kind is list or (kind is dict and not is_b64_object(val)):
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {json_type(val)}")
    if kind is bool:
        want("int64")
        feature["values"].append(int(val))
    elif kind is dict:
        want("bytes")
        feature["values"].append(decode_b64(val))
    elif kind is str:
        want("bytes")
        feature["values"].append(val.encode("utf-8"))
    elif kind is float:
        want("float")
        if math.isfinite(val) and not -_FLT_MAX <= val <= _FLT_MAX:
            raise _lossy(val, "float")
        feature["values"].append(val)
    else:
        want("int64")
        if val > _INT64[1]:
            raise invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
        if val < _INT64[0]:
            raise _type_error(val, DT_INT64)
        feature["values"].append(val)


def _example(val: Any) -> dict[str, dict]:
    if type(val) is not dict:
        raise invalid(f"Example must be JSON object but got JSON {json_type(val)}")
    example = {}
    for name, content in val.items():
        feature: dict = {"kind": None, "values": []}
        for item in content if type(content) is list else [content]:
            _add_feature_value(item, name, feature)
        example[name] = feature
    return example


def examples_from_json(doc: dict) -> tuple[dict | None, list[dict]]:
    """``FillClassifyRegressRequestFromJson``: (context features or None, list of example features).

    The missing-key message says "classify" for regress requests too, as the real server's does.
    Each example is ``{feature: {"kind": "int64"|"float"|"bytes"|None, "values": [...]}}``.
    """
    context = _example(doc["context"]) if "context" in doc else None
    if "examples" not in doc:
        raise invalid(f"JSON Value: {json_value(doc)} When method is classify, key 'examples' is expected "
                      "and was not found")
    examples = doc["examples"]
    if type(examples) is not list:
        raise invalid(f"JSON Value: {json_value(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {json_value(doc)} 'examples' value is an empty array")
    return context, [_example(example) for example in examples]


def classify_response(classifications: list[list[tuple[str, float]]]) -> bytes:
    if not classifications:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    rows = ["[" + ", ".join("[" + json.dumps(label, ensure_ascii=False) + ", " + format_float32(score) + "]"
                            for label, score in row) + "]" for row in classifications]
    return ('{"results": [' + ", ".join(rows) + "]}").encode()


def regress_response(values: list[float]) -> bytes:
    if not values:
        raise invalid("Cannot convert empty RegressionResults to JSON")
    return ('{"results": [' + ", ".join(format_float32(v) for v in values) + "]}").encode()
