"""Build a wheelhouse: every dependency of ebmtool as a wheel, torch and torchvision excepted, plus ebmtool's own wheel,
for a GPU node with no internet whose Python already holds torch (issue 22, item 7). ``make wheelhouse`` runs this.

    python scripts/wheelhouse.py                                   # this machine's Python and platform
    python scripts/wheelhouse.py --python-version 3.12 --platform manylinux_2_28_x86_64 --torch 2.11 --torchvision 0.26

One source of truth: the requirements are pyproject.toml's ``dependencies`` (plus ``--extras``, default ``dev``: pytest
for gpu_check.py's ``pytest-cuda`` check), their markers evaluated for the target. How torch is left out: pip resolves
them (``pip install --dry-run --report``) in an environment where torch and torchvision are already "installed" (two
bare ``.dist-info`` folders at ``--torch``/``--torchvision``, the node's versions), so nothing of torch's (nvidia-*,
triton, sympy, ...) enters the resolution, while pytorch-fid's own other dependencies (numpy, pillow, scipy) do. pip
evaluates dependency markers for the Python that runs it, not for ``--python-version``, so the closure is walked again
here with the target's markers, and anything missing is resolved again as an explicit requirement. The wheels are then
fetched with ``pip download --no-deps`` at the pinned versions; pure-Python (``none-any``) wheels are accepted under any
``--platform``. The folder gets ``requirements.txt`` (the pinned list, ebmtool included) for the node-side install:

    python3 -m pip install --no-index --no-deps --find-links DIR --target SITE -r DIR/requirements.txt

Wheels in the folder that are not in the list (an earlier resolution) are removed, so the folder can be kept as a cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # pip vendors packaging: the script runs with any Python that has pip
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename  # type: ignore[no-redef]

try:
    import tomllib
except ImportError:  # Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
EXCLUDED = ("torch", "torchvision")  # the node's own; everything only they need stays out too


def native_platform() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", sysconfig.get_platform())


def target_env(python_version: str, platforms: list[str]) -> dict[str, str]:
    """PEP 508 marker variables of the target (the platform's from its tag; this machine's where none is given)."""
    env = {k: v for k, v in _default_env().items()}
    env.update(python_version=python_version, python_full_version=python_version + ".0",
               implementation_name="cpython", platform_python_implementation="CPython")
    if platforms:
        tag = platforms[0]
        if tag.startswith(("manylinux", "musllinux", "linux")):
            env.update(sys_platform="linux", platform_system="Linux", os_name="posix",
                       platform_machine=re.sub(r"^(manylinux|musllinux)_?\d*(_\d+)?_|^linux_", "", tag))
        elif tag.startswith("macosx"):
            env.update(sys_platform="darwin", platform_system="Darwin", os_name="posix",
                       platform_machine=tag.split("_", 3)[-1])
        elif tag.startswith("win"):
            env.update(sys_platform="win32", platform_system="Windows", os_name="nt",
                       platform_machine={"win_amd64": "AMD64", "win32": "x86", "win_arm64": "ARM64"}.get(tag, tag))
    return env


def _default_env() -> dict[str, str]:
    return {"implementation_name": sys.implementation.name, "implementation_version": platform.python_version(),
            "os_name": os.name, "platform_machine": platform.machine(), "platform_release": platform.release(),
            "platform_system": platform.system(), "platform_version": platform.version(),
            "python_full_version": platform.python_version(), "platform_python_implementation":
            platform.python_implementation(), "python_version": ".".join(platform.python_version_tuple()[:2]),
            "sys_platform": sys.platform}


def applies(req: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ({""} | extras))


def roots(extras: list[str], env: dict[str, str]) -> list[Requirement]:
    """pyproject.toml's dependencies and the named extras that apply to the target, torch and torchvision left out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for e in extras:
        if e not in project.get("optional-dependencies", {}):
            sys.exit(f"wheelhouse: pyproject.toml has no extra {e!r}")
        specs += project["optional-dependencies"][e]
    out = [Requirement(s) for s in specs]
    return [r for r in out if applies(r, env, set()) and canonicalize_name(r.name) not in EXCLUDED]


def bare(req: Requirement) -> str:
    return f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}"


LEGACY = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}


def expand_platform(tag: str) -> list[str]:
    """A manylinux/musllinux tag and every older one it implies: unlike for the native platform, pip does not expand
    ``--platform manylinux_2_28_x86_64`` to the manylinux2014 wheels such a system also runs (safetensors, ...)."""
    m = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1|manylinux_(\d+)_(\d+))_(\w+)", tag)
    if m:
        major, minor = LEGACY.get(m.group(1), (int(m.group(2) or 0), int(m.group(3) or 0)))
        arch = m.group(4)
        out = [f"manylinux_{major}_{y}_{arch}" for y in range(minor, 4, -1)]
        out += [f"{legacy}_{arch}" for legacy, (_, y) in LEGACY.items() if y <= minor]
        return [tag] + [t for t in out if t != tag]
    m = re.fullmatch(r"musllinux_(\d+)_(\d+)_(\w+)", tag)
    if m:
        return [f"musllinux_{m.group(1)}_{y}_{m.group(3)}" for y in range(int(m.group(2)), -1, -1)]
    return [tag]


def pip_target_args(a: argparse.Namespace) -> list[str]:
    out = ["--only-binary=:all:", "--implementation", "cp"]
    if a.python_version:
        out += ["--python-version", a.python_version]
    for p in dict.fromkeys(t for tag in a.platform for t in expand_platform(tag)):
        out += ["--platform", p]
    return out


def resolve(reqs: list[str], a: argparse.Namespace, tmp: Path) -> dict[str, dict]:
    """pip's resolution of ``reqs`` beside an installed torch/torchvision: {canonical name: report item}."""
    site, pipdir = tmp / "site", tmp / "pip"
    pipdir.mkdir(exist_ok=True)
    link = pipdir / "pip"
    if not link.exists():
        import pip

        link.symlink_to(Path(pip.__file__).parent)
    for name, version in (("torch", a.torch), ("torchvision", a.torchvision)):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("wheelhouse-stub\n")
    report = tmp / "report.json"
    # -S: no site-packages, so pip sees only the stub torch/torchvision as installed (and resolves all else)
    cmd = [sys.executable, "-S", "-m", "pip", "install", "--dry-run", "--report", str(report), "-q",
           "--break-system-packages", "--no-warn-script-location", *pip_target_args(a), *reqs]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pipdir), str(site)]), PIP_DISABLE_PIP_VERSION_CHECK="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("wheelhouse: pip could not resolve the requirements:\n" + _errors(p.stderr))
    items = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i for i in items}


def _errors(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if "is ignored: it is neither a file nor a directory" not in ln)


def closure(start: list[Requirement], resolved: dict[str, dict], env: dict[str, str]) -> tuple[set[str], list[Requirement]]:
    """The resolved packages the target needs (markers evaluated for it), and the needed ones pip left out."""
    need: set[str] = set()
    missing: list[Requirement] = []
    todo = [(r, set(r.extras)) for r in start]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if name in EXCLUDED or (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        if name not in resolved:
            missing.append(req)
            continue
        need.add(name)
        for dep in map(Requirement, resolved[name]["metadata"].get("requires_dist") or []):
            if applies(dep, env, extras):
                todo.append((dep, set(dep.extras)))
    return need, missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python-version", default="", help="target Python, e.g. 3.12 (default: this one)")
    ap.add_argument("--platform", nargs="*", default=[], help="target platform tag(s), e.g. manylinux_2_28_x86_64 "
                                                              "(default: this machine's)")
    ap.add_argument("--extras", default="dev", help="comma-separated extras of pyproject.toml to include ('' for none)")
    ap.add_argument("--torch", default="2.11.0", help="the node's torch version (only for resolving)")
    ap.add_argument("--torchvision", default="0.26.0", help="the node's torchvision version (only for resolving)")
    ap.add_argument("-d", "--dest", default="", help="output folder (default: wheelhouse/cpXY-PLATFORM)")
    a = ap.parse_args(argv)
    a.platform = [p for p in " ".join(a.platform).replace(",", " ").split() if p]
    pyver = a.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    dest = Path(a.dest or ROOT / "wheelhouse" / f"cp{pyver.replace('.', '')}-{a.platform[0] if a.platform else native_platform()}")
    env = target_env(pyver, a.platform)
    extras = [e.strip() for e in a.extras.split(",") if e.strip()]
    start = roots(extras, env)

    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as t:
        reqs = [bare(r) for r in start]
        for _ in range(3):
            resolved = resolve(reqs, a, Path(t))
            need, missing = closure(start, resolved, env)
            if not missing:
                break
            print(f"wheelhouse: pip left out {', '.join(map(str, missing))} (its markers were evaluated for "
                  f"Python {sys.version_info.major}.{sys.version_info.minor}); resolving again", file=sys.stderr)
            reqs += [bare(r) for r in missing]
        else:
            sys.exit(f"wheelhouse: still missing after 3 resolutions: {', '.join(map(str, missing))}")
    pins = sorted(f"{resolved[n]['metadata']['name']}=={resolved[n]['metadata']['version']}" for n in need)

    dest.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest),
                        *pip_target_args(a), *pins], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("wheelhouse: pip download failed:\n" + _errors(p.stderr))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for old in dest.glob("ebmtool-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="ebmtool-wheel-") as tmp:
        # built from a copy: an in-tree build writes build/ and ebmtool.egg-info/ into the checkout, under the feet
        # of any process importing ebmtool from it (make test's other workers)
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "ebmtool", src / "ebmtool", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(src)],
                           capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("wheelhouse: pip wheel . failed:\n" + _errors(p.stderr))
    pins.append(f"ebmtool=={project['version']}")

    wanted = {canonicalize_name(s.split("==")[0]): s.split("==")[1] for s in pins}
    kept = []
    for w in dest.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(w.name)
        if wanted.get(canonicalize_name(name)) == str(version):
            kept.append(w)
        else:
            w.unlink()  # an earlier resolution's
    got = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in kept}
    if got != set(wanted):
        sys.exit(f"wheelhouse: no wheel for {', '.join(sorted(set(wanted) - got))}")
    for w in kept:
        zipfile.ZipFile(w).testzip()
    target = f"cp{pyver.replace('.', '')} {' '.join(a.platform) or native_platform()}"
    shown = dest.resolve().relative_to(ROOT) if dest.resolve().is_relative_to(ROOT) else dest.resolve()
    (dest / "requirements.txt").write_text(
        f"# scripts/wheelhouse.py for {target}, extras [{','.join(extras)}]; torch and torchvision are the node's own.\n"
        f"# python3 -m pip install --no-index --no-deps --find-links {shown} --target SITE -r {shown}/requirements.txt\n"
        + "".join(p + "\n" for p in pins))
    size = sum(w.stat().st_size for w in kept) / 2**20
    print(f"wheelhouse: {len(kept)} wheels ({size:.0f} MiB) for {target} in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
