"""Build the Lambda layer: `make layer` (and so `sam build`, through layers/deps/Makefile) runs
`python -m encord_mirror.build_layer --out DIR` from the repo root.

1. Export the runtime requirements from uv.lock (never edited by hand): `uv export --frozen --no-dev
   --no-hashes --no-emit-project`.
2. Install exactly those pins (`--no-deps`) as Lambda's platform wheels (manylinux_2_28 x86_64,
   CPython 3.12, binary only) into DIR (default `build/layer/python`), whatever machine builds it: no Docker.
3. Copy `src/encord_mirror` in, without this script. The emulator is a package of its own
   (`packages/encord-emulator`), in the dev group only, so the export never lists it.

The layer must not carry the dev-only image stack (opencv, shapely) or PyAV (the CLI's `video` extra):
the build fails if it does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

LAYER_DIR = Path("build/layer/python")
EXCLUDED_PACKAGE_PARTS = ("build_layer.py",)
FORBIDDEN_IN_LAYER = (
    "cv2",
    "shapely",
    "opencv_python_headless.libs",
    "moto",
    "pytest",
    "encord_emulator",
    "av",
)
# Lambda's python3.12 runtime runs on Amazon Linux 2023 (glibc 2.34), so manylinux_2_28 wheels load there.
# python3.11 (Amazon Linux 2, glibc 2.26) would need manylinux2014 wheels, and the locked numpy (2.4.6
# for Python < 3.12) publishes none: template.yaml's Runtime and these two constants move together.
LAMBDA_PYTHON = "3.12"
LAMBDA_PLATFORM = "manylinux_2_28_x86_64"
PLATFORM_PIP = ("--platform", LAMBDA_PLATFORM, "--implementation", "cp", "--python-version", LAMBDA_PYTHON)
PLATFORM_UV = ("--python-platform", "x86_64-manylinux_2_28", "--python-version", LAMBDA_PYTHON)


class LayerBuildError(Exception):
    """The layer could not be built; the message says which step and why."""


def find_uv(root: Path) -> str:
    candidates = [os.environ.get("UV"), str(root / ".tools/bin/uv"), shutil.which("uv")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise LayerBuildError("uv not found: run `make dev` (it installs .tools/bin/uv) or set UV=/path/to/uv")


def _run(command: list[str], *, step: str) -> None:
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise LayerBuildError(
            f"{step} failed ({' '.join(command[:3])} ...):\n{result.stderr.strip()[-2000:]}"
        )


def export_requirements(uv: str, root: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            uv,
            "export",
            "--project",
            str(root),
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--no-emit-project",
            "--format",
            "requirements-txt",
            "--output-file",
            str(out),
        ],
        step="uv export",
    )
    return out


def _has_pip() -> bool:
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], check=False, capture_output=True)
    return probe.returncode == 0


def install_requirements(uv: str, requirements: Path, target: Path) -> None:
    """The lock's exact pins as Lambda-platform wheels: pip when the interpreter has it, else uv's pip."""
    if _has_pip():
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *PLATFORM_PIP]
        command += ["--only-binary=:all:", "--target", str(target), "-r", str(requirements)]
    else:
        command = [uv, "pip", "install", "--quiet", "--no-deps", *PLATFORM_UV, "--only-binary", ":all:"]
        command += ["--target", str(target), "-r", str(requirements)]
    _run(command, step="installing the runtime requirements")


def copy_package(root: Path, target: Path) -> None:
    source = root / "src" / "encord_mirror"
    destination = target / "encord_mirror"
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(
        source,
        destination,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *EXCLUDED_PACKAGE_PARTS),
    )


def tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_layer(target: Path) -> None:
    present = [name for name in FORBIDDEN_IN_LAYER if (target / name).exists()]
    if present:
        raise LayerBuildError(f"the layer carries dev-only packages {present}: check the lock's dev group")


def build(root: Path, target: Path | None = None) -> Path:
    if not (root / "uv.lock").is_file():
        raise LayerBuildError(f"no uv.lock in {root}: run from the repository root or pass --root")
    uv = find_uv(root)
    target = target or root / LAYER_DIR
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    requirements = export_requirements(uv, root, root / "build" / "layer-requirements.txt")
    install_requirements(uv, requirements, target)
    copy_package(root, target)
    check_layer(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m encord_mirror.build_layer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root (default: .)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"the layer's python/ folder (default: ROOT/{LAYER_DIR})"
    )
    args = parser.parse_args(argv)
    try:
        target = build(args.root.resolve(), args.out.resolve() if args.out else None)
    except LayerBuildError as exc:
        print(f"build_layer: {exc}", file=sys.stderr)
        return 1
    print(f"layer built in {target}: {tree_size(target) / 1e6:.1f} MB unzipped (Lambda allows 250 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
