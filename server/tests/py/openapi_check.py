"""Checks aside's OpenAPI document against real traffic.

Usage: openapi_check.py SPEC.json SAMPLES.json

SPEC.json is what the server answered on /openapi.json; SAMPLES.json a list of
{method, route, status, content_type, request?, response} taken from real calls
(route is the documented template, e.g. /v1/collections/{name}). The document must
validate (openapi-spec-validator); every documented operation must have a sample
with a 2xx answer; every sample's response must match the schema the document
gives for its status (or status range), and every JSON request body the schema of
its requestBody. Prints one line per checked sample; exits 1 on the first fault.
"""

import json
import sys

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate


def schema_validator(spec: dict, schema: dict) -> Draft202012Validator:
    # "#/components/..." references resolve inside the document they appear in.
    root = dict(schema)
    root["components"] = spec.get("components", {})
    return Draft202012Validator(root)


def response_schema(op: dict, status: int, content_type: str):
    responses = op["responses"]
    entry = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
    if entry is None:
        raise SystemExit(f"status {status} is not documented")
    content = entry.get("content", {})
    media = content.get(content_type)
    if media is None:
        raise SystemExit(f"status {status}: content type {content_type} is not documented ({list(content)})")
    return media.get("schema")


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    samples = json.load(open(sys.argv[2]))
    validate(spec)
    print("document: valid OpenAPI", spec["openapi"])
    documented = {
        (path, method)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in ("get", "put", "post", "delete", "patch")
    }
    covered = set()
    for s in samples:
        key = (s["route"], s["method"].lower())
        if key not in documented:
            raise SystemExit(f"{key} is not in the document")
        op = spec["paths"][s["route"]][s["method"].lower()]
        ctype = s["content_type"].split(";")[0].strip()
        schema = response_schema(op, s["status"], ctype)
        body = s["response"]
        if ctype == "application/json":
            errors = sorted(schema_validator(spec, schema).iter_errors(body), key=str)
            if errors:
                raise SystemExit(f"{key} {s['status']}: response does not match: {errors[0].message}\n{json.dumps(body)[:500]}")
        elif schema is not None and schema.get("type") == "string" and not isinstance(body, str):
            raise SystemExit(f"{key} {s['status']}: expected text")
        if "request" in s and s["request"] is not None:
            req = op["requestBody"]["content"]["application/json"]["schema"]
            errors = list(schema_validator(spec, req).iter_errors(s["request"]))
            if errors:
                raise SystemExit(f"{key}: request does not match its schema: {errors[0].message}")
        if 200 <= s["status"] < 300:
            covered.add(key)
        print(f"ok {s['method']} {s['route']} {s['status']}")
    missing = sorted(documented - covered)
    if missing:
        raise SystemExit(f"documented operations without a checked 2xx answer: {missing}")
    print(f"{len(samples)} samples, {len(covered)} of {len(documented)} operations covered")


if __name__ == "__main__":
    main()
