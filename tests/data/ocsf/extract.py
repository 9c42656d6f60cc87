#!/usr/bin/env python3
"""Extracts from the OCSF schema (github.com/ocsf/ocsf-schema at a release tag) what the tests
check Passerelle's OCSF records against: the HTTP Activity class's attributes (inherited from
base_event and network, with their includes), each attribute's type, the enum values of the
`_id` attributes, and the attributes of every object the class reaches (to any depth).

    python3 extract.py SCHEMA_CHECKOUT > http_activity-VERSION.json
"""
import json
import os
import sys

root = sys.argv[1]


def load(path):
    with open(os.path.join(root, path)) as f:
        return json.load(f)


dictionary = load("dictionary.json")["attributes"]
types = load("dictionary.json")["types"]["attributes"]


def merge(old, new):
    """An attribute refined by a class or include: its enum values add to the parent's (the
    base event's 0 Unknown and 99 Other stay)."""
    out = {**old, **new}
    if "enum" in old and "enum" in new:
        out["enum"] = {**old["enum"], **new["enum"]}
    return out


def merged_attributes(doc):
    """A class or object's attributes with its $includes (profiles, includes) expanded; what a
    profile brings is marked with the profile's name (it applies when a record names it in
    metadata.profiles)."""
    attrs = {}
    for include in doc.get("attributes", {}).get("$include", []):
        included = merged_attributes(load(include))
        if include.startswith("profiles/"):
            profile = os.path.basename(include)[: -len(".json")]
            included = {name: {**spec, "profile": profile} for name, spec in included.items()}
        attrs.update(included)
    for name, spec in doc.get("attributes", {}).items():
        if name == "$include":
            continue
        attrs[name] = merge(attrs.get(name, {}), spec)
    return attrs


def chain(doc, folder):
    attrs = {}
    if "extends" in doc:
        parent = doc["extends"]
        for candidate in (f"{folder}/{parent}.json", f"events/{parent}.json", f"objects/{parent}.json"):
            if os.path.exists(os.path.join(root, candidate)):
                attrs.update(chain(load(candidate), os.path.dirname(candidate)))
                break
    for name, spec in merged_attributes(doc).items():
        attrs[name] = merge(attrs.get(name, {}), spec)
    return attrs


def describe(attrs):
    out = {}
    for name, spec in attrs.items():
        base = dictionary.get(name, {})
        entry = {"type": spec.get("type", base.get("type"))}
        if entry["type"] == "object_t":
            entry["object_type"] = spec.get("object_type", base.get("object_type"))
        elif entry["type"] and not entry["type"].endswith("_t") and entry["type"] != "object":
            # Later schemas name the object as the type.
            entry["object_type"], entry["type"] = entry["type"], "object_t"
        enum = spec.get("enum", base.get("enum"))
        if enum:
            # Integer enums (`*_id`), or strings (`http_method`'s).
            entry["enum"] = sorted((int(k) if k.lstrip("-").isdigit() else k) for k in enum)
            if any(isinstance(k, str) for k in entry["enum"]):
                entry["enum"] = sorted(str(k) for k in entry["enum"])
        if "requirement" in spec:
            entry["requirement"] = spec["requirement"]
        if "profile" in spec:
            entry["profile"] = spec["profile"]
        if base.get("is_array") or spec.get("is_array"):
            entry["array"] = True
        out[name] = entry
    return out


event = load("events/network/http_activity.json")
category = load("events/network/network.json")
categories = load("categories.json")["attributes"]
category_uid = categories[category.get("category", "network")]["uid"]
class_uid = category_uid * 1000 + event["uid"]
class_attrs = describe(chain(event, "events/network"))
# The schema computes these three from the class: the base event's enums are placeholders.
class_attrs["class_uid"]["enum"] = [class_uid]
class_attrs["category_uid"]["enum"] = [category_uid]
class_attrs["type_uid"]["enum"] = sorted(class_uid * 100 + a for a in class_attrs["activity_id"]["enum"])
objects, todo = {}, [a["object_type"] for a in class_attrs.values() if a.get("object_type")]
while todo:
    name = todo.pop()
    if name in objects or not os.path.exists(os.path.join(root, f"objects/{name}.json")):
        continue
    objects[name] = describe(chain(load(f"objects/{name}.json"), "objects"))
    todo.extend(a["object_type"] for a in objects[name].values() if a.get("object_type"))
primitive = {name: spec.get("type", name) for name, spec in types.items()}
version = load("version.json")["version"]
print(json.dumps({
    "version": version,
    "class_uid": class_uid,
    "category_uid": category_uid,
    "attributes": class_attrs,
    "objects": objects,
    "types": primitive,
}, indent=1, sort_keys=True))
