#!/usr/bin/env python3
"""Renders a kustomization directory the way `kustomize build` does, for the subset that
deploy/kubernetes/ uses, so hack/check-deploy.sh can check the overlays on a machine without
kustomize: `resources` (files and directories holding a kustomization.yaml), `patches` with
a `path` to a strategic-merge patch, and `images` (newName, newTag, digest) for pods' containers. Lists of containers, env, volumes, ports... merge by their
key as Kubernetes' strategic merge does; `$patch: delete` removes a list item and `null` a key.
Any other kustomization key is refused, so a rendering is never silently wrong. When kustomize
is available, check-deploy compares both renderings.
Usage: kustomize-lite.py DIR   (prints the rendered YAML stream)"""
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "resources", "patches", "images"}
# The merge key of each list the manifests patch (Kubernetes' patchMergeKey).
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
    "volumeMounts": "mountPath", "imagePullSecrets": "name",
    "ports": ("containerPort", "port"),  # a container's ports, a Service's
}


def merge(base, patch):
    """Strategic merge of `patch` into `base` (both plain YAML values)."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return patch
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = merge_list(out[key], value, MERGE_KEYS[key])
        elif key in out:
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_list(base, patch, mkeys):
    out, new = list(base), []
    for item in patch:
        mkey = next((k for k in (mkeys if isinstance(mkeys, tuple) else (mkeys,))
                     if isinstance(item, dict) and k in item), mkeys)
        if not isinstance(item, dict) or mkey not in item:
            sys.exit(f"kustomize-lite: a list item without its merge key {mkey!r}: {item!r}")
        idx = next((i for i, b in enumerate(out) if b.get(mkey) == item[mkey]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
        elif "$patch" in item:
            sys.exit(f"kustomize-lite: unsupported $patch: {item['$patch']}")
        elif idx is None:
            new.append(item)
        else:
            # kustomize moves a patched item to the front too, in the patch's order.
            new.append(merge(out.pop(idx), item))
    return new + out  # kustomize puts new items first (the order matters to $(VAR) in env)


def set_image(doc, image):
    """kustomize's `images` transformer, for the containers of a pod template."""
    pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        ref = c.get("image", "")
        name = ref.split("@")[0]
        if ":" in name.rsplit("/", 1)[-1]:
            name = name.rsplit(":", 1)[0]
        if name != image["name"]:
            continue
        tag = ref[len(name):]
        new = image.get("newName", name)
        if "digest" in image:
            tag = "@" + image["digest"]
        elif "newTag" in image:
            tag = ":" + str(image["newTag"])
        c["image"] = new + tag


def ident(doc):
    meta = doc.get("metadata") or {}
    return (doc.get("kind"), meta.get("namespace"), meta.get("name"))


def build(directory):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - KNOWN
    if unknown:
        sys.exit(f"kustomize-lite: {directory}/kustomization.yaml: unsupported keys {sorted(unknown)}")
    docs = []
    for res in k.get("resources") or []:
        path = os.path.join(directory, res)
        if os.path.isdir(path):
            docs += build(path)
        else:
            with open(path) as f:
                docs += [d for d in yaml.safe_load_all(f) if d]
    for p in k.get("patches") or []:
        if set(p) != {"path"}:
            sys.exit(f"kustomize-lite: {directory}: only patches with a path are supported: {p!r}")
        with open(os.path.join(directory, p["path"])) as f:
            patch = yaml.safe_load(f)
        matches = [i for i, d in enumerate(docs) if ident(d) == ident(patch)]
        if len(matches) != 1:
            sys.exit(f"kustomize-lite: {directory}/{p['path']}: patches {len(matches)} resources")
        docs[matches[0]] = merge(docs[matches[0]], patch)
    for image in k.get("images") or []:
        for d in docs:
            set_image(d, image)
    seen = set()
    for d in docs:
        if ident(d) in seen:
            sys.exit(f"kustomize-lite: {directory}: {ident(d)} appears twice")
        seen.add(ident(d))
    return docs


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    yaml.safe_dump_all(build(sys.argv[1]), sys.stdout, sort_keys=False)
