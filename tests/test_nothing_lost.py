"""Issue 33 §1: nothing lost. A --checkpoint path never deletes anything but a checkpoint of the same run; of two runs
writing one new output exactly one wins and the other exits 2 in one line; a full disk (a small tmpfs) and a full
stdout (/dev/full) are one line each, and a trained model or checkpoint that cannot be written is kept elsewhere;
a writer killed with SIGKILL leaves a temporary file that the next write removes. Also the integrity hash's legacy
rule and its cost (§2)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import ebmtool_command, run_cli, run_sub, refused as _refused
from ebmtool import artifacts, files

SMOKE = ["--preset", "smoke", "--epochs", 1, "--set", "posterior.steps=2", "--device", "cpu", "--quiet"]




def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------ the checkpoint path
def test_checkpoint_with_force_does_not_delete_a_model(mle_model, digits_ds, tmp_path):
    """The issue's command: `cp mle.safetensors other2.safetensors; ebmtool pretrain-generator --data d.safetensors
    --preset smoke -o ck5.safetensors --checkpoint other2.safetensors --force` removed other2.safetensors."""
    other = tmp_path / "other2.safetensors"
    shutil.copyfile(mle_model, other)
    before = other.read_bytes()
    out = tmp_path / "ck5.safetensors"
    line = _refused(run_cli(["pretrain-generator", "--data", digits_ds, "--preset", "smoke", "-o", out,
                             "--checkpoint", other, "--force"]), str(other), "model artifact", "not a checkpoint")
    assert "--resume" not in line  # following that advice would destroy the model
    assert other.read_bytes() == before and not out.exists() and _temps(tmp_path) == []
    # without --force: the same refusal, never the advice to resume a model
    line = _refused(run_cli(["pretrain-generator", "--data", digits_ds, "--preset", "smoke", "-o", out,
                             "--checkpoint", other]), str(other), "not a checkpoint")
    assert "--resume" not in line and other.read_bytes() == before


@pytest.mark.parametrize("content", ["text", "dataset"])
def test_checkpoint_path_holding_another_file_is_refused(content, digits_ds, tmp_path):
    ck = tmp_path / "ck.safetensors"
    if content == "text":
        ck.write_text("my notes\n")
    else:
        shutil.copyfile(digits_ds, ck)
    before = ck.read_bytes()
    _refused(run_cli(["pretrain-generator", "--data", digits_ds, "-o", tmp_path / "m.safetensors", "--checkpoint",
                      ck, "--force", *SMOKE]), str(ck), "not a checkpoint")
    assert ck.read_bytes() == before


def test_force_replaces_but_never_removes_another_runs_checkpoint(digits_ds, tmp_path):
    """--force lets a run replace a checkpoint of an earlier run; a run that writes none (--checkpoint-every 0)
    leaves it, since it is not its own. Without --force the hint to resume it stays (it IS a checkpoint)."""
    ck = tmp_path / "ck.safetensors"
    artifacts.save(ck, "checkpoint", {"w": torch.ones(3)}, meta={"iteration": 1})
    before = ck.read_bytes()
    out = tmp_path / "m.safetensors"
    _refused(run_cli(["pretrain-generator", "--data", digits_ds, "-o", out, "--checkpoint", ck, *SMOKE]),
             str(ck), "a checkpoint of an earlier run exists", f"--resume {ck}")
    run_cli(["pretrain-generator", "--data", digits_ds, "-o", out, "--checkpoint", ck, "--force", *SMOKE]).ok()
    assert out.exists() and ck.read_bytes() == before
    # a run that writes its own checkpoint there replaces it, and removes its own at the end
    out.unlink()
    run_cli(["pretrain-generator", "--data", digits_ds, "-o", out, "--checkpoint", ck, "--force",
             "--checkpoint-every", 1, *SMOKE]).ok()
    assert out.exists() and not ck.exists()


# ------------------------------------------------------------------------------ two runs, one output
def _while_writing(monkeypatch, action) -> None:
    """Run ``action`` once, when this process starts writing its first file (after every check of the output)."""
    real, done = files.remove_stale_temps, []

    def starts_writing(path):
        if not done:
            done.append(True)
            action()
        return real(path)

    monkeypatch.setattr(files, "remove_stale_temps", starts_writing)


def _race_case(name, gen_model, mle_model, digits_ds, out, seed):
    model = mle_model
    return {
        "sample": ["sample", "--model", model, "-n", 8, "--seed", seed, "--device", "cpu", "--quiet", "-o", out],
        "reconstruct": ["reconstruct", "--model", model, "--data", digits_ds, "--limit", 8, "--seed", seed,
                        "--device", "cpu", "--quiet", "-o", out],
        "anomaly": ["anomaly", "--model", model, "--data", digits_ds, "--anomaly-class", 1, "--seed", seed,
                    "--device", "cpu", "--quiet", "-o", out, "--steps", 2],
        "pretrain-generator": ["pretrain-generator", "--data", digits_ds, "-o", out, "--seed", seed, *SMOKE],
        "plot": ["plot", gen_model if seed == 1 else mle_model, "-o", out.with_suffix(".png")],
    }[name]


@pytest.mark.parametrize("command", ["sample", "reconstruct", "anomaly", "pretrain-generator", "plot"])
def test_two_runs_writing_one_output_exactly_one_wins(command, gen_model, mle_model, digits_ds, tmp_path,
                                                      monkeypatch):
    """Run 1 passes its checks; while it writes, run 2 (another process, another seed) runs from start to end and
    writes the same -o. Run 2 wins; run 1 exits 2 in one line and leaves run 2's file as it was."""
    out = tmp_path / ("same.png" if command == "plot" else "same.safetensors")
    other = {}

    def second_run():
        other["run"] = run_sub(_race_case(command, gen_model, mle_model, digits_ds, out, 2))
        other["bytes"] = out.read_bytes()

    _while_writing(monkeypatch, second_run)
    r = run_cli(_race_case(command, gen_model, mle_model, digits_ds, out, 1))
    assert other["run"].code == 0, other["run"].err
    _refused(r, str(out), "output exists")
    assert out.read_bytes() == other["bytes"] and _temps(tmp_path) == []
    if command != "plot":  # (the second run's figure is of the other model)
        assert artifacts.load(out).config.get("seed", artifacts.load(out).meta.get("seed")) == 2
    if command == "pretrain-generator":  # the trained model is kept, elsewhere, and the line says where
        kept = [p for p in Path(tempfile.gettempdir()).glob(f"same.rescued-{os.getpid()}.safetensors")]
        assert kept and str(kept[0]) in r.err_lines[0] and artifacts.load(kept[0]).kind == "model"
        kept[0].unlink()


def test_two_concurrent_sample_processes_one_wins(mle_model, tmp_path):
    """The issue's race as typed: two `sample` processes started together with one -o; however they interleave,
    exactly one exits 0 and the other exits 2 in one line, and the file is the winner's, whole."""
    out = tmp_path / "srace.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(ebmtool_command() + ["sample", "--model", str(mle_model), "-n", "1000", "--seed",
                                                   str(seed), "--device", "cpu", "--quiet", "-o", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    loser = next(err for c, err in results if c == 2)
    lines = [ln for ln in loser.splitlines() if ln.strip()]
    assert len(lines) == 1 and "output exists" in lines[0] and "Traceback" not in loser, loser
    winner_seed = 1 + [c for c, _ in results].index(0)
    assert artifacts.load(out).meta["seed"] == winner_seed and _temps(tmp_path) == []


def _hold_write(path: Path, content: bytes, overwrite: bool, go: Path, done: Path) -> subprocess.Popen:
    """A process that writes ``path`` through files.atomic_write and waits for ``go`` before the write ends."""
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom ebmtool import files\n"
        "try:\n"
        f"    with files.atomic_write({str(path)!r}, overwrite={overwrite}) as tmp:\n"
        f"        Path(tmp).write_bytes({content!r})\n"
        f"        Path({str(done)!r}).touch()\n"
        f"        while not Path({str(go)!r}).exists():\n"
        "            time.sleep(0.01)\n"
        "except files.UserError as e:\n"
        "    print(e, file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))


def _wait_for(p: Path, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not p.exists():
        assert time.monotonic() - t0 < timeout, f"{p} never appeared"
        time.sleep(0.01)


def test_atomic_write_two_processes_exactly_one_wins(tmp_path):
    """Both processes have their temporary file written before either ends its write: the first to end wins, the
    second (no overwrite) is refused and leaves the winner's bytes; nothing temporary is left."""
    out = tmp_path / "o.bin"
    go1, go2 = tmp_path / "go1", tmp_path / "go2"
    a = _hold_write(out, b"first", False, go1, tmp_path / "ready1")
    b = _hold_write(out, b"second", False, go2, tmp_path / "ready2")
    _wait_for(tmp_path / "ready1")
    _wait_for(tmp_path / "ready2")
    go1.touch()
    assert a.wait(timeout=60) == 0
    go2.touch()
    assert b.wait(timeout=60) == 2 and "output exists" in b.stderr.read()
    assert out.read_bytes() == b"first" and _temps(tmp_path) == []
    # with overwrite (--force) the later write replaces the file, atomically
    files.write_bytes(out, b"third", overwrite=True)
    assert out.read_bytes() == b"third" and oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------ kill -9 during a write
def test_a_writer_killed_with_sigkill_leaves_a_temporary_file_the_next_write_removes(mle_model, tmp_path):
    out = tmp_path / "s.safetensors"
    killed = _hold_write(out, b"half a file", False, tmp_path / "never", tmp_path / "ready1")
    alive = _hold_write(out, b"still writing", False, tmp_path / "go", tmp_path / "ready2")
    _wait_for(tmp_path / "ready1")
    _wait_for(tmp_path / "ready2")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    left = _temps(tmp_path)
    assert len(left) == 2 and all(n.startswith(".s.safetensors.ebmtool.") for n in left), left
    run_cli(["sample", "--model", mle_model, "-n", 4, "--device", "cpu", "--quiet", "-o", out]).ok()
    assert _temps(tmp_path) == [n for n in left if f".{alive.pid}." in n]  # the live writer's file is kept
    (tmp_path / "go").touch()
    assert alive.wait(timeout=60) == 2  # it finds the sample written meanwhile: refused, its file kept
    assert artifacts.load(out).kind == "samples" and _temps(tmp_path) == []


# ------------------------------------------------------------------------------ a full disk, a full stdout
@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs at tmp_path/small (mounting needs root, as in CI; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave))


@pytest.fixture
def rescue_dir(tmp_path, monkeypatch):
    d = tmp_path / "rescue"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_full_disk_keeps_the_trained_model(small_fs, rescue_dir, digits_ds, tmp_path):
    """`fit-prior ... -o small/m.safetensors` on a nearly full file system: one line, and the trained model is in
    $TMPDIR, where the line says; moved into place elsewhere it is a complete model (nothing to train again)."""
    _fill(small_fs, 8 * 1024)
    out = small_fs / "m.safetensors"
    line = _refused(run_cli(["pretrain-generator", "--data", digits_ds, "-o", out, *SMOKE]), str(out),
                    "No space left on device", "mv ")
    kept = list(rescue_dir.glob("m.rescued-*.safetensors"))
    assert len(kept) == 1 and str(kept[0]) in line
    assert not out.exists() and _temps(small_fs) == []
    moved = tmp_path / "m.safetensors"
    shutil.move(kept[0], moved)
    run_cli(["sample", "--model", moved, "-n", 4, "--device", "cpu", "--quiet", "-o", tmp_path / "s.safetensors"]).ok()


def test_full_disk_checkpoint_is_one_line_and_kept(small_fs, rescue_dir, digits_ds, tmp_path):
    _fill(small_fs, 8 * 1024)
    ck = small_fs / "ck.safetensors"
    line = _refused(run_cli(["pretrain-generator", "--data", digits_ds, "-o", tmp_path / "m.safetensors",
                             "--checkpoint", ck, "--checkpoint-every", 1, *SMOKE]), str(ck),
                    "No space left on device")
    kept = list(rescue_dir.glob("ck.rescued-*.safetensors"))
    assert len(kept) == 1 and str(kept[0]) in line and artifacts.load(kept[0]).kind == "checkpoint"
    assert not ck.exists() and _temps(small_fs) == []


@pytest.mark.parametrize("case", ["data prepare", "sample -o", "sample --grid"])
def test_full_disk_is_one_line(case, small_fs, mle_model, tmp_path):
    _fill(small_fs, 2 * 1024)
    out = small_fs / ("g.png" if case.endswith("grid") else "o.safetensors")
    argv = {"data prepare": ["data", "prepare", "--dataset", "digits", "--limit", 500, "-o", out],
            "sample -o": ["sample", "--model", mle_model, "-n", 200, "--device", "cpu", "--quiet", "-o", out],
            "sample --grid": ["sample", "--model", mle_model, "-n", 64, "--device", "cpu", "--quiet", "--grid", out,
                              "--scale", 8]}[case]
    _refused(run_cli(argv), str(out), "No space left on device")
    assert not out.exists() and _temps(small_fs) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("case", ["inspect", "presets", "anomaly --json"])
def test_full_stdout_is_one_line(case, mle_model, digits_ds):
    argv = {"inspect": ["inspect", mle_model], "presets": ["presets"],
            "anomaly --json": ["anomaly", "--model", mle_model, "--data", digits_ds, "--anomaly-class", 1,
                               "--steps", 2, "--device", "cpu", "--quiet", "--json"]}[case]
    with open("/dev/full", "w") as full:
        p = subprocess.run(ebmtool_command() + [str(a) for a in argv], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and lines == ["ebmtool: error: cannot write to standard output (No space left on "
                                           "device)"], p.stderr


# ------------------------------------------------------------------------------ §2: the hash's legacy rule and cost
def _legacy_copy(src: Path, dst: Path, edit=None) -> Path:
    """``src`` as ebmtool wrote it before the integrity hash: format 1, no ebmtool.sha256."""
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        tensors, md = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    md = {k: v for k, v in md.items() if k != artifacts.HASH_KEY} | {"ebmtool.format": "1"}
    if edit is not None:
        edit(tensors)
    save_file(tensors, str(dst), metadata=md)
    return dst


def test_legacy_files_are_read_and_a_legacy_dataset_is_checked_against_its_content_hash(mle_model, digits_ds,
                                                                                         tmp_path):
    model = _legacy_copy(mle_model, tmp_path / "old-model.safetensors")
    run_cli(["sample", "--model", model, "-n", 4, "--device", "cpu", "--quiet", "-o", tmp_path / "s.safetensors"]).ok()
    data = _legacy_copy(digits_ds, tmp_path / "old-data.safetensors")
    assert artifacts.load(data).kind == "dataset"

    def flip(t):
        t["images"][0, 0, 0, 0] ^= 1

    changed = _legacy_copy(digits_ds, tmp_path / "old-changed.safetensors", flip)
    _refused(run_cli(["inspect", changed]), str(changed), "content_sha256")
    # a current file stripped of its hash cannot pass as an old one
    stripped = tmp_path / "stripped.safetensors"
    _legacy_copy(digits_ds, stripped)
    raw = stripped.read_bytes().replace(b'"ebmtool.format":"1"', b'"ebmtool.format":"2"')
    stripped.write_bytes(raw)
    _refused(run_cli(["inspect", stripped]), str(stripped), "lacks its integrity hash")


def test_hashing_a_36_mb_dataset_costs_well_under_a_second(tmp_path):
    images = torch.randint(0, 256, (46000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (46000,), generator=torch.Generator().manual_seed(1))
    p = artifacts.save(tmp_path / "big.safetensors", "dataset", {"images": images, "labels": labels},
                       meta={"content_sha256": artifacts.tensor_sha256(images, labels)})
    data = p.read_bytes()
    assert len(data) > 36e6
    header_end = files.safetensors_header(data)[1]
    # CPU seconds of this process (the hashing runs in it): a budget that other busy processes do not inflate
    t0 = time.process_time()
    assert artifacts.verify(data, header_end)
    verify_s = time.process_time() - t0
    t0 = time.process_time()
    artifacts.tensor_sha256(images, labels)
    content_s = time.process_time() - t0
    assert verify_s < 0.5 and content_s < 0.5, (verify_s, content_s)
    b = bytearray(data)
    b[-1] ^= 1
    assert not artifacts.verify(bytes(b), header_end)
