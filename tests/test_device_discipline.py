"""Device discipline, checked on the CPU (issue 17, item 2).

* Every tensor-creation call in ``ebmtool/`` names its device: ``device=`` taken from an input (``x.device``,
  ``dev``) or ``device="cpu"`` for a host-side tensor (data preparation, histories, index permutations drawn
  from a CPU generator). ``*_like`` and ``x.new_*`` calls take it from their input and are not flagged. A
  creation call without a device silently lands on the CPU and fails (or copies) on the first CUDA run.
* The CUDA RNG state of every device travels in checkpoints: ``cuda_rng_tensors`` / ``restore_cuda_rng``
  exercised with a fake ``torch.cuda`` (and through ``Checkpointer`` save -> load -> restore).
* ``--precision fp32`` on CUDA is exact fp32 (torch's default lets cuDNN convolutions use TF32).
"""

from __future__ import annotations

import ast
from types import SimpleNamespace

import torch

from conftest import REPO

# factories that create a tensor from nothing (or from Python data): they need device=
FACTORIES = {"randn", "rand", "randint", "randperm", "zeros", "ones", "empty", "full", "arange", "linspace",
             "logspace", "eye", "tensor", "empty_strided", "scalar_tensor", "tril_indices", "triu_indices",
             "Generator"}


def creation_calls_without_device(source: str) -> list[tuple[int, str]]:
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f = node.func
        if not (isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in FACTORIES):
            continue
        if any(k.arg == "device" for k in node.keywords) or any(k.arg is None for k in node.keywords):
            continue  # device= given (or **kwargs that may carry it)
        if f.attr == "Generator" and node.args:
            continue  # torch.Generator(device) positionally
        bad.append((node.lineno, ast.unparse(node)[:120]))
    return bad


def test_scanner_flags_a_creation_without_device_and_accepts_the_disciplined_forms():
    src = ("import torch\n"
           "a = torch.randn(3, 4)\n"                         # flagged
           "b = torch.zeros(2, device=x.device)\n"
           "c = torch.randn_like(x)\n"
           "d = x.new_zeros(3)\n"
           "e = torch.Generator()\n"                         # flagged
           "f = torch.Generator(device='cpu')\n"
           "g = torch.tensor([1.0], dtype=torch.float32)\n"  # flagged
           "h = torch.arange(5, **kw)\n")
    assert [ln for ln, _ in creation_calls_without_device(src)] == [2, 6, 8]


def test_every_creation_call_in_ebmtool_names_its_device():
    files = sorted((REPO / "ebmtool").rglob("*.py"))
    assert len(files) > 10
    bad = [f"{p.relative_to(REPO)}:{ln}: {code}" for p in files
           for ln, code in creation_calls_without_device(p.read_text())]
    assert not bad, ("tensor creation without device= (take it from an input, or say device=\"cpu\" for a "
                     "host-side tensor):\n" + "\n".join(bad))


# ------------------------------------------------------------------------------------------------ CUDA RNG
class FakeCuda:
    """Stands in for ``torch.cuda`` on a machine without a GPU: per-device RNG states as byte tensors."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.states = [torch.randint(0, 256, (16,), dtype=torch.uint8, generator=g, device="cpu") for _ in range(n)]
        self.set_calls: list[int] = []

    def is_available(self) -> bool:
        return bool(self.states)

    def device_count(self) -> int:
        return len(self.states)

    def get_rng_state_all(self):
        return [s.clone() for s in self.states]

    def set_rng_state(self, state, device):
        assert state.dtype == torch.uint8 and state.device.type == "cpu"
        self.states[device] = state.clone()
        self.set_calls.append(device)


def test_cuda_rng_state_saves_and_restores_every_device_with_a_fake_cuda():
    from ebmtool.checkpoint import cuda_rng_tensors, restore_cuda_rng

    src = FakeCuda(2, seed=1)
    saved = cuda_rng_tensors(src)
    assert sorted(saved) == ["rng.cuda0", "rng.cuda1"]
    dst = FakeCuda(2, seed=2)
    assert not torch.equal(dst.states[0], src.states[0])
    assert restore_cuda_rng({**saved, "rng.torch": torch.zeros(3, dtype=torch.uint8)}, dst) == [0, 1]
    assert all(torch.equal(a, b) for a, b in zip(dst.states, src.states))
    # resumed on a machine with fewer GPUs: the devices it has are restored, the rest skipped
    one = FakeCuda(1, seed=3)
    assert restore_cuda_rng(saved, one) == [0] and torch.equal(one.states[0], src.states[0])
    # no CUDA: nothing saved, nothing restored
    none = FakeCuda(0)
    assert cuda_rng_tensors(none) == {} and restore_cuda_rng(saved, none) == []


def test_checkpointer_carries_the_cuda_rng_state_through_a_file(tmp_path, monkeypatch):
    from ebmtool import artifacts
    from ebmtool.checkpoint import Checkpointer

    src = FakeCuda(2, seed=4)
    for name in ("is_available", "device_count", "get_rng_state_all", "set_rng_state"):
        monkeypatch.setattr(torch.cuda, name, getattr(src, name))
    history = SimpleNamespace(steps={"loss": [1.0]}, epochs={})
    path = tmp_path / "c.ckpt.safetensors"
    Checkpointer(path=path).save(1, history)
    art = artifacts.load(str(path), "checkpoint")
    assert torch.equal(art.tensors["rng.cuda1"], src.states[1])
    expected = [s.clone() for s in src.states]
    src.states = [torch.zeros_like(s) for s in src.states]  # the resumed process starts elsewhere
    src.set_calls.clear()
    Checkpointer(resume=art).restore_rng_and_history(SimpleNamespace(steps={}, epochs={}))
    assert src.set_calls == [0, 1]
    assert all(torch.equal(a, b) for a, b in zip(src.states, expected))


# ------------------------------------------------------------------------------------------------ precision
def test_fp32_on_cuda_turns_tf32_off_and_tf32_turns_it_on():
    from ebmtool.runtime import resolve

    cuda = torch.device("cuda")  # resolving needs no GPU: it sets the backend flags the kernels read
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        assert resolve("tf32", cuda).name == "tf32"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert resolve("fp32", cuda).name == "fp32"
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_fp32_on_cpu_leaves_the_cuda_flags_alone():
    from ebmtool.runtime import resolve

    old = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        resolve("fp32", torch.device("cpu"))
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = old
