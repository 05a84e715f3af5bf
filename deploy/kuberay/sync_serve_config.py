"""Copy deploy/serve/lingbot-rt.yaml, verbatim, into the RayService's `serveConfigV2`, so the
cluster runs the Serve config the repository tests and documents (one file, not two copies).

    python deploy/kuberay/sync_serve_config.py           # rewrite deploy/kuberay/rayservice.yaml
    python deploy/kuberay/sync_serve_config.py --check   # exit 1 if it is out of date (tests/test_deploy.py)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1]
SERVE_CONFIG = DEPLOY / "serve" / "lingbot-rt.yaml"
RAYSERVICE = DEPLOY / "kuberay" / "rayservice.yaml"
KEY = "  serveConfigV2: |"                  # under the RayService's `spec:`
INDENT = " " * 4


def render(manifest: str, serve_config: str) -> str:
    """`manifest` with the block under `KEY` replaced by `serve_config`, indented into it."""
    lines = manifest.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == KEY]
    if len(starts) != 1:
        raise ValueError(f"expected one line {KEY.strip()!r} in the manifest, found {len(starts)}")
    start = end = starts[0] + 1
    while end < len(lines) and (lines[end].startswith(INDENT) or not lines[end].strip()):
        end += 1
    block = [INDENT + line if line.strip() else "\n" for line in serve_config.splitlines(keepends=True)]
    return "".join(lines[:start] + block + lines[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if the manifest is out of date")
    args = parser.parse_args()
    current = RAYSERVICE.read_text()
    wanted = render(current, SERVE_CONFIG.read_text())
    if current == wanted:
        return 0
    if args.check:
        print(f"{RAYSERVICE} is out of date with {SERVE_CONFIG}: run {Path(__file__).name}", file=sys.stderr)
        return 1
    RAYSERVICE.write_text(wanted)
    print(f"wrote {RAYSERVICE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
