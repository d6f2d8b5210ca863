"""One command that exercises every CUDA path of ebmtool (issue 17). Needs a CUDA machine, the repository and
ebmtool's dependencies importable by the Python that runs it (torch, torchvision, pydantic, typer, pytest, ...): the
checks run with that same Python (``sys.executable``), never .venv's. On a GPU node with no internet whose Python holds
its own torch, install the rest from the wheelhouse (``make wheelhouse``; docs/gpu_node.md) and run
``PYTHONPATH=SITE python3 benchmarks/gpu_check.py``; a missing package is one line naming it, exit 2.

    .venv/bin/python benchmarks/gpu_check.py            # < 5 min on one H200; table + benchmarks/results/gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --dry-run  # with ebmtool importable, on any machine: the checks, nothing run

Each check is a subprocess with its own timeout, so one failure does not stop the others; a failure is one line
naming the command and the first repository file:line of its traceback (or ebmtool's one-line error). Checks:

* ``pytest-cuda``          the test subset marked ``cuda`` (``pytest -m cuda``; skipped on machines without CUDA);
* ``pretrain``, ``fit-<method>``  every registered method's ``--preset smoke --device cuda`` on scikit-learn's digits;
* ``precision-auto``       ``--precision auto`` picks bf16 where ``torch.cuda.is_bf16_supported()``, else fp32;
* ``precision-step``       one LEBM training step (svhn32 and cifar32 generators, batch 100) in fp32, tf32 and
                           bf16: relative error of the parameter gradients and of the update against fp32, and it/s;
* ``resume-deterministic`` SIGKILL + ``--resume`` under ``torch.use_deterministic_algorithms(True)``: byte-identical?
* ``resume-default``       the same with cuDNN's default (non-deterministic) algorithms: max relative difference;
* ``torchrun-1``           ``torchrun --nproc_per_node 1`` (NCCL); ``torchrun-2-nccl`` where the machine has 2 GPUs;
* ``speed``                ``benchmarks/speed.py --device cuda --sizes svhn32 cifar32`` (fp32 and bf16 rows against
                           the LEBM listing), its JSON kept beside this one;
* ``langevin-compile``     the posterior Langevin chain eagerly, under ``torch.compile`` and as a CUDA graph:
                           steps/s and whether each is faster (kept only if faster: the JSON says which).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
PY = sys.executable
EBM = [PY, "-m", "ebmtool"]
SMOKE = ["--preset", "smoke", "--device", "cuda", "--quiet", "--force", "--json"]
RESUME_FLAGS = ["--method", "mle", "--epochs", "30", "--batch-size", "32", "--checkpoint-every", "2", "--seed", "3"]


@dataclass
class Check:
    name: str
    what: str
    timeout_s: int
    argv: list[str] | None = None            # a plain command; or
    worker: str | None = None                 # a function of this file run as `gpu_check.py --worker NAME`
    needs: list[str] = field(default_factory=list)  # checks whose files it reads
    min_gpus: int = 1

    def command(self, work: Path) -> list[str]:
        if self.argv is not None:
            return [a.replace("{work}", str(work)) for a in self.argv]
        return [PY, str(Path(__file__).resolve()), "--worker", str(self.worker), "--work", str(work)]


# the methods whose smoke run starts from the pretrained generator (--init); every other one starts from scratch
FROM_PRETRAIN = ("mle", "adaptive-nce", "nce")


def fit_methods() -> list[str]:
    """Every method ``fit-prior --method`` takes, from ebmtool's method registry (one ``fit-<method>`` check each)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from ebmtool.methods import METHODS

    return [k for k, m in METHODS.items() if m.fit_prior]


def checks(n_gpus: int | None) -> list[Check]:
    d, g = "{work}/digits.safetensors", "{work}/pretrain.safetensors"
    out: list[Check] = [
        Check("pytest-cuda", "tests marked cuda", 120, [PY, "-m", "pytest", "-q", "-x", "-m", "cuda", "-p", "no:cacheprovider",
                                                        str(ROOT / "tests")]),
        Check("data", "data prepare digits (1x8x8, 256 images)", 60,
              EBM + ["data", "prepare", "--dataset", "digits", "--limit", "256", "-o", d, "--force", "--json"]),
        Check("pretrain", "pretrain-generator --preset smoke --device cuda", 60,
              EBM + ["pretrain-generator", "--data", d, "-o", g] + SMOKE, needs=["data"]),
    ]
    for m in fit_methods():
        init = m in FROM_PRETRAIN
        out.append(Check(f"fit-{m}", f"fit-prior --method {m} --preset smoke --device cuda", 60,
                         EBM + ["fit-prior", "--method", m, "--data", d, *(["--init", g] if init else []),
                                "-o", f"{{work}}/{m}.safetensors"] + SMOKE, needs=["pretrain"] if init else ["data"]))
    out += [
        Check("precision-auto", "--precision auto on CUDA: bf16 where supported, else fp32 (resolve + a fit)", 60,
              worker="precision_auto", needs=["pretrain"]),
        Check("precision-step", "one mle step fp32 vs tf32 vs bf16 (svhn32, cifar32): gradient/update rel. error, it/s",
              120, worker="precision_step"),
        Check("resume-deterministic", "SIGKILL + --resume, torch.use_deterministic_algorithms(True): byte-identical",
              120, worker="resume_deterministic", needs=["pretrain"]),
        Check("resume-default", "SIGKILL + --resume, default cuDNN algorithms: max relative difference", 120,
              worker="resume_default", needs=["pretrain"]),
        Check("torchrun-1", "torchrun --nproc_per_node 1 fit-prior mle --device cuda (NCCL)", 90,
              [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "ebmtool", "fit-prior",
               "--method", "mle", "--data", d, "--init", g, "-o", "{work}/ddp1.safetensors"] + SMOKE, needs=["pretrain"]),
        Check("torchrun-2-nccl", "torchrun --nproc_per_node 2 fit-prior mle --device cuda (NCCL)", 120,
              [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ebmtool", "fit-prior",
               "--method", "mle", "--data", d, "--init", g, "-o", "{work}/ddp2.safetensors"] + SMOKE, needs=["pretrain"],
              min_gpus=2),
        Check("speed", "benchmarks/speed.py --device cuda --sizes svhn32 cifar32 (fp32, bf16; vs the listing)", 240,
              [PY, str(ROOT / "benchmarks" / "speed.py"), "--device", "cuda", "--sizes", "svhn32", "cifar32",
               "--deadline-s", "90", "--out", "{work}/speed.json"]),
        Check("langevin-compile", "posterior chain eager vs torch.compile vs CUDA graph (svhn32): steps/s", 150,
              worker="langevin_compile"),
    ]
    return out


# ------------------------------------------------------------------------------------------------ running
def first_repo_frame(text: str) -> str | None:
    """The last traceback frame inside the repository (file:line), or None."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', text)
    mine = [(f, n) for f, n in frames if f.startswith(str(ROOT)) and not any(d in f for d in ("/.venv/", "/wheelhouse/",
                                                                                                "/site-packages/"))]
    if not mine:
        return None
    f, n = mine[-1]
    return f"{Path(f).relative_to(ROOT)}:{n}"


def failure_line(name: str, cmd: list[str], code: int | None, err: str) -> str:
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    last = lines[-1] if lines else f"exit {code}, no output"
    where = first_repo_frame(err)
    short = " ".join(shlex.quote(Path(a).name if a == PY else a) for a in cmd)
    return f"FAIL {name}: {short[:160]} -> {where + ': ' if where else ''}{last[:240]}"


def run_check(c: Check, work: Path, env: dict[str, str]) -> dict[str, Any]:
    cmd = c.command(work)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=c.timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return {"status": "fail", "seconds": round(time.perf_counter() - t0, 1),
                "error": failure_line(c.name, cmd, None, err + f"\ntimed out after {c.timeout_s} s")}
    row: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1)}
    result = last_json(p.stdout)
    if result is not None:
        row["result"] = result
    if p.returncode != 0 or (isinstance(result, dict) and result.get("ok") is False):
        row["status"] = "fail"
        if isinstance(result, dict) and result.get("ok") is False:
            why = str(result.get("why", "")) or p.stderr
        else:
            why = p.stdout + p.stderr if c.name == "pytest-cuda" else p.stderr
        row["error"] = failure_line(c.name, cmd, p.returncode, why)
    else:
        row["status"] = "ok"
        if c.name == "pytest-cuda":
            row["result"] = (p.stdout.strip().splitlines() or [""])[-1]
    return row


def last_json(text: str) -> Any:
    for ln in reversed(text.strip().splitlines()):
        ln = ln.strip()
        if ln.startswith("{"):
            try:
                return json.loads(ln)
            except json.JSONDecodeError:
                return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def summary(row: dict[str, Any]) -> str:
    r = row.get("result")
    if row["status"] != "ok":
        return row.get("error") or row.get("why", "")
    if isinstance(r, dict):
        return r.get("summary") or ", ".join(f"{k}={v}" for k, v in list(r.items())[:4] if not isinstance(v, (dict, list)))
    return str(r or "")[:200]


def print_table(rows: list[tuple[Check, dict[str, Any]]]) -> None:
    w = max(len(c.name) for c, _ in rows)
    print(f"{'check':{w}}  {'status':8} {'s':>6}  detail")
    for c, r in rows:
        print(f"{c.name:{w}}  {r['status']:8} {r.get('seconds', ''):>6}  {summary(r) if r['status'] != 'planned' else c.what}")


# import name -> the package to install; ebmtool.cli last, for anything its imports need beyond these
PACKAGES = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "pydantic": "pydantic", "typer": "typer",
            "rich": "rich", "safetensors": "safetensors", "pytorch_fid": "pytorch-fid", "sklearn": "scikit-learn",
            "scipy": "scipy", "PIL": "pillow", "matplotlib": "matplotlib", "pytest": "pytest"}


def missing_package() -> str | None:
    """The first dependency the checks need that this Python cannot import, named as a package, or None."""
    import importlib

    for mod, pkg in PACKAGES.items():
        try:
            importlib.import_module(mod)
        except ImportError as e:
            if e.name is None:  # present but broken (a binary built for another numpy, say)
                return f"{pkg} (import failed: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__})"
            top = e.name.split(".")[0]
            return pkg if top == mod else f"{top} (needed by {pkg})"
    sys.path.insert(0, str(ROOT))
    try:
        importlib.import_module("ebmtool.cli")
    except ImportError as e:
        return f"{(e.name or '?').split('.')[0]} (needed by ebmtool)"
    finally:
        sys.path.remove(str(ROOT))
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="list the checks and their commands; run nothing")
    ap.add_argument("--out", default=str(RESULTS), help="JSON file of the results")
    ap.add_argument("--only", nargs="+", metavar="CHECK", help="run these checks (and the ones they need)")
    ap.add_argument("--budget-s", type=float, default=290.0, help="start no check after this many seconds")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return run_worker(args.worker, Path(args.work))
    n_gpus = None
    if not args.dry_run:
        missing = missing_package()
        if missing:
            print(f"gpu_check: missing package {missing} (install the wheelhouse: see docs/gpu_node.md)", file=sys.stderr)
            return 2
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); use --dry-run to list the checks",
                  file=sys.stderr)
            return 2
        n_gpus = torch.cuda.device_count()
    try:
        plan = checks(n_gpus)
    except ImportError as e:  # --dry-run reads the methods from ebmtool's registry, which needs ebmtool's dependencies
        print(f"gpu_check: missing package {(e.name or '?').split('.')[0]} (needed by ebmtool, whose methods it lists)",
              file=sys.stderr)
        return 2
    names = {c.name for c in plan}
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            print(f"gpu_check: unknown check {unknown[0]!r} (checks: {', '.join(c.name for c in plan)})", file=sys.stderr)
            return 2
        want = set(args.only)
        for c in reversed(plan):  # the checks they need, transitively (a check needs only earlier ones)
            if c.name in want:
                want.update(c.needs)
        plan = [c for c in plan if c.name in want]
    if args.dry_run:
        print(f"gpu_check --dry-run: {len(plan)} checks (each a subprocess with its own timeout; budget {args.budget_s:.0f} s)")
        print_table([(c, {"status": "planned", "seconds": c.timeout_s}) for c in plan])
        for c in plan:
            print(f"  {c.name}: {' '.join(shlex.quote(a) for a in c.command(Path('WORK')))}")
        return 0

    # the repository first, then the caller's PYTHONPATH (a wheelhouse --target on a node without internet)
    pythonpath = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=pythonpath, COLUMNS="200")
    rows: list[tuple[Check, dict[str, Any]]] = []
    status: dict[str, str] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        for c in plan:
            if n_gpus is not None and n_gpus < c.min_gpus:
                r = {"status": "skipped", "why": f"needs {c.min_gpus} GPUs, this machine has {n_gpus}"}
            elif any(status.get(n) != "ok" for n in c.needs):
                r = {"status": "skipped", "why": f"needs {', '.join(c.needs)}, which did not pass"}
            elif time.perf_counter() - t0 > args.budget_s:
                r = {"status": "skipped", "why": f"over the {args.budget_s:.0f} s budget"}
            else:
                r = run_check(c, work, env)
            status[c.name] = r["status"]
            rows.append((c, r))
            if r["status"] == "fail":
                print(r["error"], file=sys.stderr, flush=True)
        speed = work / "speed.json"
        speed_json = json.loads(speed.read_text()) if speed.exists() else None
    import torch

    report = {
        "env": {"gpu": torch.cuda.get_device_name(0), "gpus": n_gpus, "torch": torch.__version__,
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "bf16_supported": torch.cuda.is_bf16_supported(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "elapsed_s": round(time.perf_counter() - t0, 1)},
        "checks": [{"name": c.name, "what": c.what, **r} for c, r in rows],
        "speed": speed_json,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_table(rows)
    failed = [c.name for c, r in rows if r["status"] == "fail"]
    print(f"{len(rows) - len(failed)}/{len(rows)} checks did not fail ({report['env']['elapsed_s']:.0f} s); wrote {out}")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------ workers
# Each runs in its own process (`--worker NAME --work DIR`) and prints one JSON line: {"ok": bool, ...}.
def _emit(d: dict[str, Any]) -> int:
    print(json.dumps(d))
    return 0


def precision_auto(work: Path) -> dict[str, Any]:
    import torch

    from ebmtool.runtime import resolve

    dev = torch.device("cuda")
    picked = resolve("auto", dev).name
    want = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    out = work / "auto.safetensors"
    p = subprocess.run(EBM + ["fit-prior", "--method", "mle", "--data", str(work / "digits.safetensors"), "--init",
                              str(work / "pretrain.safetensors"), "-o", str(out), "--precision", "auto", "--epochs", "1"]
                       + SMOKE, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        return {"ok": False, "why": p.stderr, "picked": picked}
    from ebmtool import artifacts

    art = artifacts.load(str(out), "model")
    recorded = json.dumps(art.config.get("precision")), json.dumps(art.meta.get("precision"))
    return {"ok": picked == want, "picked": picked, "expected": want, "artifact_precision": recorded,
            "why": f"auto picked {picked}, expected {want}", "summary": f"auto -> {picked} (expected {want})"}


def _mle_step(arch: str, nz: int, ngf: int, prec_name: str):
    """The real ``step`` of ebmtool.methods.mle (captured from fit, as benchmarks/speed.py does) at ``arch``."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from speed import capture_step  # noqa: E402

    from ebmtool.config import GeneratorSpec
    from ebmtool.methods import mle as mle_mod
    from ebmtool.training import RunContext, TrainData
    from ebmtool.runtime import resolve

    dev = torch.device("cuda")
    prec = resolve(prec_name, dev)
    torch.manual_seed(0)
    x = torch.rand(100, 3, 32, 32, device=dev) * 2 - 1
    data = TrainData(x=x, labels=torch.zeros(100, dtype=torch.long, device="cpu"), content_sha256="gpu-check", parent={})
    cfg = mle_mod.MLEConfig(generator=GeneratorSpec(arch=arch, nz=nz, ngf=ngf), batch_size=100)
    step, cells = capture_step(mle_mod, cfg, data, None, None, RunContext(device=dev, quiet=True, seed=0, precision=prec))
    return step, cells, x, torch.arange(100, device="cpu")


def precision_step(work: Path) -> dict[str, Any]:
    import torch

    res: dict[str, Any] = {}
    for arch, nz, ngf in (("svhn32", 100, 64), ("cifar32", 128, 128)):
        grads: dict[str, torch.Tensor] = {}
        updates: dict[str, torch.Tensor] = {}
        rate: dict[str, float] = {}
        for p in ("fp32", "tf32", "bf16"):
            step, cells, x, idx = _mle_step(arch, nz, ngf, p)
            params = [q for k in ("opt_g", "opt_e") for grp in cells[k].param_groups for q in grp["params"]]
            before = torch.cat([q.detach().flatten().clone() for q in params])
            seen: list[torch.Tensor] = []
            hooks = [cells[k].register_step_pre_hook(lambda opt, a, kw: seen.append(torch.cat(
                [q.grad.detach().flatten().float() for grp in opt.param_groups for q in grp["params"] if q.grad is not None])))
                for k in ("opt_g", "opt_e")]
            torch.manual_seed(1)
            torch.cuda.manual_seed_all(1)
            step(idx, x, 0)
            torch.cuda.synchronize()
            for h in hooks:
                h.remove()
            grads[p] = torch.cat(seen)
            updates[p] = torch.cat([q.detach().flatten() for q in params]) - before
            for i in range(2):  # warm-up
                step(idx, x, i + 1)
            torch.cuda.synchronize()
            n, t0 = 5, time.perf_counter()
            for i in range(n):
                step(idx, x, i + 3)
            torch.cuda.synchronize()
            rate[p] = n / (time.perf_counter() - t0)
            del step, cells
        rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
        res[arch] = {p: {"it_per_s": round(rate[p], 3), "speedup_vs_fp32": round(rate[p] / rate["fp32"], 3),
                         "grad_rel_err_vs_fp32": None if p == "fp32" else rel(grads[p], grads["fp32"]),
                         "update_rel_err_vs_fp32": None if p == "fp32" else rel(updates[p], updates["fp32"])}
                     for p in rate}
    s = "; ".join(f"{a}: " + ", ".join(f"{p} {v['it_per_s']:.2f} it/s" + ("" if v["grad_rel_err_vs_fp32"] is None else
                                       f" (grad err {v['grad_rel_err_vs_fp32']:.1e})") for p, v in r.items())
                  for a, r in res.items())
    return {"ok": True, "sizes": res, "summary": s,
            "notes": "one LEBM iteration (60 prior + 20 posterior Langevin steps, Adam steps), batch 100; grad error = "
                     "|g_p - g_fp32| / |g_fp32| over both optimizers' gradients at the first step from the same seed; "
                     "update error the same for the parameter change (Adam's first step is ~lr*sign(g))"}


def _resume(work: Path, deterministic: bool) -> dict[str, Any]:
    from safetensors.torch import load_file

    tag = "det" if deterministic else "default"
    pre = ("import torch; torch.use_deterministic_algorithms(True); " if deterministic else "import torch; ") + \
        "from ebmtool.cli import main; import sys; main(sys.argv[1:])"
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8") if deterministic else dict(os.environ)
    base = [PY, "-c", pre, "fit-prior", *RESUME_FLAGS, "--data", str(work / "digits.safetensors"),
            "--init", str(work / "pretrain.safetensors")] + SMOKE
    ref, out = work / f"ref-{tag}.safetensors", work / f"run-{tag}.safetensors"
    ck = work / f"run-{tag}.ckpt.safetensors"
    p = subprocess.run(base + ["-o", str(ref)], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        return {"ok": False, "why": p.stderr}
    proc = subprocess.Popen(base + ["-o", str(out), "--checkpoint", str(ck)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.time() + 60
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if not killed or not ck.exists():
        return {"ok": False, "why": f"the run {'finished' if not killed else 'wrote no checkpoint'} before the kill; "
                                    f"raise --epochs in RESUME_FLAGS of {Path(__file__).name}"}
    p = subprocess.run(base + ["-o", str(out), "--checkpoint", str(ck), "--resume", str(ck)], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        return {"ok": False, "why": p.stderr}
    a, b = load_file(str(ref)), load_file(str(out))
    if sorted(a) != sorted(b):
        return {"ok": False, "why": f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}"}
    diff = {k: float(((a[k].double() - b[k].double()).norm() / max(a[k].double().norm(), 1e-30)))
            for k in a if a[k].is_floating_point() and not bool((a[k] == b[k]).all())}
    identical = all(bool((a[k] == b[k]).all()) for k in a)
    worst = max(diff.values(), default=0.0)
    ok = identical if deterministic else worst < 5e-2
    what = "byte-identical" if identical else f"differs: max rel. diff {worst:.1e} over {len(diff)} tensors"
    return {"ok": ok, "deterministic_algorithms": deterministic, "byte_identical": identical, "max_rel_diff": worst,
            "differing_tensors": sorted(diff)[:10], "summary": f"kill+resume {what}",
            "why": f"kill+resume with deterministic={deterministic}: {what}"}


def resume_deterministic(work: Path) -> dict[str, Any]:
    return _resume(work, True)


def resume_default(work: Path) -> dict[str, Any]:
    return _resume(work, False)


def langevin_compile(work: Path) -> dict[str, Any]:
    import torch

    step, cells, x, _ = _mle_step("svhn32", 100, 64, "fp32")
    model = cells["model"]
    model.requires_grad_(False)
    K, s = 20, 0.1
    z0 = torch.randn(100, 100, device="cuda")

    def grad_step(z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            g, = torch.autograd.grad(model.log_joint(x, z).sum(), z)
        return z.detach() + 0.5 * s * s * g + s * noise

    def chain(f: Callable) -> Callable[[], torch.Tensor]:
        def run():
            z = z0
            for _ in range(K):
                z = f(z, torch.randn_like(z))
            return z
        return run

    def timed(run: Callable, reps: int = 5) -> float:
        run()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        torch.cuda.synchronize()
        return reps * K / (time.perf_counter() - t0)

    res: dict[str, Any] = {"eager_steps_per_s": timed(chain(grad_step))}
    ref = chain(grad_step)()
    try:
        comp = torch.compile(grad_step)
        res["compile_steps_per_s"] = timed(chain(comp))
        res["compile_speedup"] = res["compile_steps_per_s"] / res["eager_steps_per_s"]
    except Exception as e:  # noqa: BLE001 - a measurement: the failure is the result
        res["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    try:  # CUDA graph of one whole Langevin step (forward + backward to z + update), replayed K times
        static_z, static_n = z0.clone(), torch.randn_like(z0)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                grad_step(static_z, static_n)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = grad_step(static_z, static_n)

        def graphed():
            static_z.copy_(z0)
            for _ in range(K):
                static_n.normal_()
                graph.replay()
                static_z.copy_(static_out)
            return static_z

        res["cuda_graph_steps_per_s"] = timed(graphed)
        res["cuda_graph_speedup"] = res["cuda_graph_steps_per_s"] / res["eager_steps_per_s"]
    except Exception as e:  # noqa: BLE001
        res["cuda_graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    best = max((k for k in ("compile", "cuda_graph") if f"{k}_speedup" in res), key=lambda k: res[f"{k}_speedup"],
               default=None)
    res["keep"] = best if best and res[f"{best}_speedup"] > 1.05 else "eager"
    res["ok"] = True
    res["finite"] = bool(torch.isfinite(ref).all())
    res["summary"] = (f"eager {res['eager_steps_per_s']:.0f} steps/s; compile "
                      + (f"{res['compile_speedup']:.2f}x" if "compile_speedup" in res else "failed")
                      + "; CUDA graph " + (f"{res['cuda_graph_speedup']:.2f}x" if "cuda_graph_speedup" in res else "failed")
                      + f"; keep {res['keep']}")
    return res


WORKERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "precision_auto": precision_auto, "precision_step": precision_step, "resume_deterministic": resume_deterministic,
    "resume_default": resume_default, "langevin_compile": langevin_compile,
}


def run_worker(name: str, work: Path) -> int:
    sys.path.insert(0, str(ROOT))
    res = WORKERS[name](work)
    _emit(res)
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
