#!/usr/bin/env python3
"""Validate corral's aws-json output against botocore's EC2 service model.

Usage: validate_aws.py FILE

FILE is the document `corral firewall --format aws-json` prints:
    {"AuthorizeSecurityGroupIngress": [input, ...], "AuthorizeSecurityGroupEgress": [input, ...]}
Every input is checked recursively against the operation's input shape from
botocore.loaders.Loader().load_service_model('ec2', 'service-2'): every key must be a member of
the shape, every value must have the member's type (structure, list, string, integer, boolean...),
and every required member must be present. Exits 0 when valid, 1 with one line per problem
otherwise, 2 on usage errors.
"""
import json
import sys

import botocore.loaders

OPERATIONS = ("AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress")


def check(model, shape_name, value, path, problems):
    shape = model["shapes"][shape_name]
    kind = shape["type"]
    if kind == "structure":
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object for {shape_name}, got {type(value).__name__}")
            return
        members = shape.get("members", {})
        for key, item in value.items():
            if key not in members:
                problems.append(f"{path}: `{key}` is not a member of {shape_name} "
                                f"(members: {', '.join(sorted(members))})")
                continue
            check(model, members[key]["shape"], item, f"{path}.{key}", problems)
        for req in shape.get("required", []):
            if req not in value:
                problems.append(f"{path}: required member `{req}` of {shape_name} is missing")
    elif kind == "list":
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list for {shape_name}, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check(model, shape["member"]["shape"], item, f"{path}[{i}]", problems)
    elif kind == "string":
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string for {shape_name}, got {type(value).__name__}")
            return
        if "enum" in shape and value not in shape["enum"]:
            problems.append(f"{path}: `{value}` is not one of {shape['enum']}")
        if "max" in shape and len(value) > shape["max"]:
            problems.append(f"{path}: longer than {shape['max']}")
    elif kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer for {shape_name}, got {type(value).__name__}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{path}: expected a boolean for {shape_name}")
    elif kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected a number for {shape_name}")
    elif kind == "map":
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map for {shape_name}")
            return
        for k, v in value.items():
            check(model, shape["key"]["shape"], k, f"{path}<key>", problems)
            check(model, shape["value"]["shape"], v, f"{path}.{k}", problems)
    else:
        problems.append(f"{path}: shape {shape_name} of type {kind} is not expected in this input")


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as fh:
        doc = json.load(fh)
    model = botocore.loaders.Loader().load_service_model("ec2", "service-2")
    problems = []
    if not isinstance(doc, dict):
        problems.append("document: expected an object keyed by operation name")
    else:
        for key in doc:
            if key not in OPERATIONS:
                problems.append(f"document: unexpected key `{key}`")
        for op in OPERATIONS:
            inputs = doc.get(op, [])
            if not isinstance(inputs, list):
                problems.append(f"{op}: expected a list of inputs")
                continue
            input_shape = model["operations"][op]["input"]["shape"]
            for i, item in enumerate(inputs):
                check(model, input_shape, item, f"{op}[{i}]", problems)
                perms = item.get("IpPermissions") if isinstance(item, dict) else None
                if not perms:
                    problems.append(f"{op}[{i}]: no IpPermissions (the call would do nothing)")
    for p in problems:
        print(p)
    if not problems:
        count = sum(len(doc.get(op, [])) for op in OPERATIONS)
        print(f"OK: {count} request(s) match the EC2 input shapes")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
