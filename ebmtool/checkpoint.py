"""Resumable training: checkpoints in the artifact format (kind ``checkpoint``).

A method *tracks* everything that evolves during training (modules, optimisers, schedulers, buffers such as
the adaptive-NCE memory, torch.Generators); :func:`ebmtool.training.train_loop` saves all of it, plus
the global RNG states, the history and the number of completed iterations, every ``every`` iterations and
when SIGINT/SIGTERM arrives. ``--resume CKPT`` rebuilds the run from the same command, restores every tracked
object and continues at the next iteration of the same data order, so with a fixed seed on a CPU a killed
and resumed run writes tensors byte-identical to an uninterrupted one.

Optimiser and scheduler states are flattened: tensors into safetensors entries, everything else into JSON.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ebmtool import artifacts, distributed, files
from ebmtool.errors import UserError


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested dict/list by {"__tensor__": key}, collecting them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _key(k: Any) -> Any:
    return {"__int__": k} if isinstance(k, int) else k


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {(k["__int__"] if isinstance(k, dict) else k): _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def cuda_rng_tensors(cuda=None) -> dict[str, torch.Tensor]:
    """The CUDA RNG state of every visible device as checkpoint entries ``rng.cuda<i>`` (CPU byte tensors);
    none where CUDA is absent. ``cuda``: the ``torch.cuda`` module (a test passes a fake one)."""
    cuda = torch.cuda if cuda is None else cuda
    if not cuda.is_available():
        return {}
    return {f"rng.cuda{i}": s.detach().to("cpu").clone() for i, s in enumerate(cuda.get_rng_state_all())}


def restore_cuda_rng(tensors: dict[str, torch.Tensor], cuda=None) -> list[int]:
    """Set each device's CUDA RNG state from the ``rng.cuda<i>`` entries of a checkpoint; returns the devices set.
    Entries of devices this machine lacks are skipped (a run resumed on fewer GPUs); nothing happens without CUDA."""
    cuda = torch.cuda if cuda is None else cuda
    if not cuda.is_available():
        return []
    saved = {int(k[len("rng.cuda"):]): v for k, v in tensors.items()
             if k.startswith("rng.cuda") and k[len("rng.cuda"):].isdigit()}
    done = [i for i in sorted(saved) if i < cuda.device_count()]
    for i in done:
        cuda.set_rng_state(saved[i].clone(), i)
    return done


@dataclass
class Checkpointer:
    """Tracks training state; ``path`` None disables saving (resume may still be given)."""

    path: Optional[Path] = None
    every: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    resume: Optional[artifacts.Artifact] = None
    objects: dict[str, Any] = field(default_factory=dict)
    interrupted: Optional[int] = None
    inputs: dict[str, Any] = field(default_factory=dict)  # content hashes of --data / --init
    _resumed: bool = field(default=False, repr=False)
    # the identity (device, inode, size, mtime) of the checkpoint file this run may replace: the one it wrote last,
    # or the one found at the start when it resumes it (or was given --force); None: no file of its own
    _mine: Optional[tuple[int, int, int, int]] = field(default=None, repr=False)
    # the identity of the checkpoint file this run may remove at its end: the one it wrote last, or the one it
    # resumed; never one it was only allowed to replace (--force), which belongs to another run
    _own: Optional[tuple[int, int, int, int]] = field(default=None, repr=False)

    # --- ownership of the checkpoint file -------------------------------------------------------
    def _identity(self) -> Optional[tuple[int, int, int, int]]:
        try:
            st = self.path.stat() if self.path is not None else None
        except FileNotFoundError:
            return None
        return None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def claim(self, existing: bool, resumed: bool = False) -> None:
        """At the start of a run: ``existing`` True lets it replace the checkpoint file found now (the one it
        resumes, or any with --force); otherwise a file at ``path`` belongs to another run. ``resumed``: that file is
        the checkpoint this run continues, which it removes at its end like one it wrote."""
        self._mine = self._identity() if existing else None
        self._own = self._mine if resumed else None

    def owns_file(self) -> bool:
        """Whether the file at ``path`` is this run's own checkpoint (written by it, or the one it resumed),
        which it may remove once the model is written."""
        now = self._identity()
        return now is not None and now == self._own

    def _check_own(self) -> None:
        """Refuse to replace a checkpoint that another run wrote since this one started (or last saved); the
        ranks agree (rank 0 looks at the file), so every rank stops together."""
        now = self._identity()
        foreign = distributed.world().is_main and now is not None and now != self._mine
        if distributed.any_rank(foreign):
            raise UserError(f"{self.path}: a checkpoint written by another run appeared while this run was training; "
                            "not overwriting it (give this run its own -o or --checkpoint)")

    # --- tracking -----------------------------------------------------------------------------
    def track(self, **objs: Any) -> None:
        self.objects.update(objs)

    def modules(self) -> list[nn.Module]:
        """The tracked modules (the model and its parts)."""
        return [o for o in self.objects.values() if isinstance(o, nn.Module)]

    def check_supported(self, label: str) -> None:
        """Refuse --checkpoint-every / --resume for a training loop whose method tracks nothing."""
        if (self.path is not None or self.resume is not None) and not self.objects:
            raise UserError(f"{label}: this method does not support checkpoints yet (use --checkpoint-every 0)")

    @property
    def resume_iteration(self) -> int:
        return int(self.resume.meta["iteration"]) if self.resume is not None else 0

    def resume_into(self, history, first: int, last: int) -> bool:
        """Restore every tracked object, the RNG states and ``history`` once, in the training loop whose
        iterations [first, last] hold the checkpoint's iteration; True when it did."""
        if self.resume is None or self._resumed or not first <= self.resume_iteration <= last:
            return False
        self.restore()
        self.restore_rng_and_history(history)
        self._resumed = True
        return True

    # --- save -----------------------------------------------------------------------------------
    def save(self, iteration: int, history, state: dict[str, Any] | None = None) -> None:
        if self.path is None:
            return
        tensors: dict[str, torch.Tensor] = {}
        structure: dict[str, Any] = {}
        for name, obj in self.objects.items():
            if isinstance(obj, nn.Module):
                for k, v in obj.state_dict().items():
                    tensors[f"{name}.{k}"] = v.detach().cpu().clone()
                structure[name] = {"module": True}
            elif isinstance(obj, torch.Tensor):
                tensors[name] = obj.detach().cpu().clone()
                structure[name] = {"tensor": True}
            elif isinstance(obj, torch.Generator):
                tensors[name] = obj.get_state()
                structure[name] = {"generator": True}
            elif hasattr(obj, "state_dict"):
                structure[name] = {"state": _flatten(obj.state_dict(), name, tensors)}
            else:
                raise TypeError(f"cannot checkpoint {name!r} of type {type(obj).__name__}")
        if distributed.world().parallel:  # every rank's RNG state (collective: all ranks save together)
            tensors["rng.torch.ranks"] = distributed.gather(torch.get_rng_state().unsqueeze(0))
            if torch.cuda.is_available():
                tensors["rng.cuda.ranks"] = distributed.gather(torch.cuda.get_rng_state().unsqueeze(0))
        else:
            tensors["rng.torch"] = torch.get_rng_state()
            tensors.update(cuda_rng_tensors())
        # the metadata's JSON sorts its keys: the run's order of metrics is kept in "order"
        meta = {"iteration": iteration, "structure": structure, "state": state or {}, "inputs": self.inputs,
                "history": {"steps": history.steps, "epochs": history.epochs,
                            "order": {"steps": list(history.steps), "epochs": list(history.epochs)}}}
        self._check_own()
        artifacts.save_or_rescue(self.path, "checkpoint", tensors, config=self.config, meta=meta, force=True)
        self._mine = self._own = self._identity()

    # --- restore --------------------------------------------------------------------------------
    def restore(self, *names: str) -> None:
        """Load the named tracked objects (all if none named) from the resume checkpoint."""
        if self.resume is None:
            return
        art = self.resume
        structure = art.meta["structure"]
        for name in names or tuple(self.objects):
            obj = self.objects[name]
            if name not in structure:
                raise UserError(f"{art.path}: checkpoint lacks training state {name!r}")
            try:
                if isinstance(obj, nn.Module):
                    obj.load_state_dict(art.group(name), strict=True)
                elif isinstance(obj, torch.Tensor):
                    obj.copy_(art.tensors[name])
                elif isinstance(obj, torch.Generator):
                    obj.set_state(art.tensors[name])
                else:
                    obj.load_state_dict(_unflatten(structure[name]["state"], art.tensors))
            except (RuntimeError, KeyError, ValueError) as e:
                raise UserError(f"{art.path}: checkpoint state {name!r} does not fit this run "
                                f"({str(e).splitlines()[0]})") from None

    def restore_rng_and_history(self, history) -> None:
        if self.resume is None:
            return
        art = self.resume
        w = distributed.world()
        if "rng.torch.ranks" in art.tensors:
            # clone: a row view would be read from its storage start
            torch.set_rng_state(art.tensors["rng.torch.ranks"][w.rank].clone())
            if torch.cuda.is_available() and "rng.cuda.ranks" in art.tensors:
                torch.cuda.set_rng_state(art.tensors["rng.cuda.ranks"][w.rank].clone())
        else:
            torch.set_rng_state(art.tensors["rng.torch"])
        if "rng.torch.ranks" not in art.tensors:
            restore_cuda_rng(art.tensors)
        saved = art.meta["history"]
        order = saved.get("order") if isinstance(saved.get("order"), dict) else {}
        for part in ("steps", "epochs"):  # the run's order of metrics (a checkpoint without "order": as stored)
            values, first = saved[part], [k for k in order.get(part, []) if k in saved[part]]
            setattr(history, part, {k: list(values[k]) for k in first + [k for k in values if k not in first]})

    # --- signals --------------------------------------------------------------------------------
    def install_signal_handlers(self):
        """SIGINT/SIGTERM set a flag; the loop checkpoints at the next iteration boundary and stops."""
        old = {}

        def handler(signum, frame):
            self.interrupted = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass
        return old

    @staticmethod
    def restore_signal_handlers(old) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)


def check_replaceable(path: Path) -> None:
    """Refuse a ``--checkpoint`` path that holds anything but an ebmtool checkpoint: a run may replace (and at its
    end remove) only a checkpoint, never a model, a dataset or a file of another program, even with --force."""
    if not path.exists():
        return
    if not path.is_file():
        raise UserError(f"--checkpoint {path}: exists and is not a regular file")
    try:
        kind = files.safetensors_metadata(path).get("ebmtool.kind")
    except (OSError, ValueError):
        kind = None
    if kind != "checkpoint":
        what = f"a {kind} artifact" if isinstance(kind, str) and kind in artifacts.KINDS else "not an ebmtool file"
        raise UserError(f"--checkpoint {path}: is {what}, not a checkpoint; a run replaces and removes its checkpoint "
                        "file, so give a path that is free or holds a checkpoint")


def open_resume(path: str, config: dict[str, Any], inputs: dict[str, Any],
                also: Optional[dict[str, Any]] = None) -> artifacts.Artifact:
    """Load a checkpoint and check it was written by the same resolved config from the same --data / --init.
    ``also``: a second config the same run may have recorded (before --init's structure replaced the asked one,
    as checkpoints written before that correction did)."""
    art = artifacts.load(path, "checkpoint", what="--resume")
    for key in ("iteration", "structure", "history"):
        if key not in art.meta:
            raise UserError(f"{art.path}: checkpoint metadata lacks {key!r}")
    wrote, runs = art.meta.get("inputs", {}).get("method"), inputs.get("method")
    if wrote is not None and runs is not None and wrote != runs:  # (checkpoints before 2026-12 do not say)
        raise UserError(f"{art.path}: checkpoint was written by {wrote}, not {runs}; resume it with the command "
                        "that wrote it")
    if art.config != config and (also is None or art.config != also):
        diff = sorted(k for k in set(art.config) | set(config) if art.config.get(k) != config.get(k))
        newer = [k for k in diff if k not in art.config]
        if newer:  # options this version added: no command can give the old config back
            raise UserError(f"{art.path}: checkpoint predates the option(s) {', '.join(newer[:5])} of this ebmtool "
                            "version and cannot be resumed by it; start the run again")
        raise UserError(f"{art.path}: checkpoint was written with a different config "
                        f"(differs in {', '.join(diff[:5])}); resume with the same command and options")
    saved = art.meta.get("inputs", {})
    ranks, now = saved.get("world_size", 1), inputs.get("world_size", 1)
    if ranks != now:
        raise UserError(f"{art.path}: checkpoint was written by {ranks} torchrun rank(s), this run has {now}; "
                        "resume with the same --nproc_per_node")
    for key, what in (("data_content_sha256", "--data"), ("init_sha256", "--init")):
        if saved.get(key) != inputs.get(key):
            raise UserError(f"{art.path}: checkpoint was written from a different {what}; resume with the same inputs")
    return art

