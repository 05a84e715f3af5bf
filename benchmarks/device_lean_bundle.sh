#!/usr/bin/env bash
# Build `.devlean/` (ignored): the wheels the device's torch environment (Python 3.12) lacks for
# serving, load tests and bench_fps (grpcio + health/reflection, protobuf, prometheus-client,
# aiohttp, matplotlib and their pure-Python dependencies), ~28 MB, and its install.sh. Carry it:
#   bash .devlean/install.sh && export PYTHONPATH=/tmp/site:$PWD && ...
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.devlean/" .git/info/exclude 2>/dev/null || echo "/.devlean/" >> .git/info/exclude
mkdir -p .devlean/whl
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
    -d .devlean/whl "grpcio==1.85.1" "grpcio-health-checking==1.85.1" "grpcio-reflection==1.85.1" "protobuf>=7.35.1" \
    prometheus-client aiohttp aiohappyeyeballs aiosignal attrs frozenlist multidict propcache yarl idna \
    matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six typing_extensions
cat > .devlean/install.sh <<'SH'
#!/usr/bin/env bash
# The serving and load-test wheels the device's torch environment lacks, into /tmp/site.
set -e
here=$(cd "$(dirname "$0")" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$here"/whl/*.whl 2>&1 | grep -v "^WARNING: Target directory" || true
SH
chmod +x .devlean/install.sh
du -sh .devlean
