"""The BiDVL model (Kan et al., CVPR 2022): image energy E_psi(v), Gaussian inference model q_w1(h|v) and
generator G_w2(h), h ~ N(0, I); tensors ``ebm.*``, ``encoder.*``, ``generator.*``.

It answers the verbs of :class:`~ebmtool.models.base.Model` in batch-norm eval mode: sample = G(h), h ~ N(0, I)
(optionally refined by Langevin on -E in image space); reconstruct = G(mu(v)); anomaly score = E(v) (the paper's
OOD score -E(v), negated so that higher = more anomalous). Training: :mod:`ebmtool.methods.bidvl`.
"""

from __future__ import annotations

import contextlib

import torch

from ebmtool.config import Langevin
from ebmtool.errors import UserError
from ebmtool.models.base import Model, SampleOutput, check_spec, register_model
from ebmtool.nets.image_ebm import GaussianEncoder, ImageEnergy, ImageGenerator
from ebmtool.sampling import langevin

SAMPLE_CHUNK = 500  # images decoded (and refined) at a time by BiDVLModel.sample
# reconstruct --steps/--step-size: Langevin steps on log p(x, h) from mu(x), noise-free (a reconstruction wants the
# posterior's mode; with noise the chain wanders off it: MSE rose 0.20 -> 0.22 on digits where noise-free fell to 0.19)
POSTERIOR_CHAIN = Langevin(steps=20, step_size=0.1, noise=False)

@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """Batch norm from its running statistics (and no spectral-norm power iteration) for the duration."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


@register_model("bidvl")
class BiDVLModel(Model):
    """Image energy E_psi(v), inference model q_w1(h|v) = N(mu, diag exp(logvar)), generator G_w2(h)."""

    score_name = "E(v): BiDVL image energy, higher = more anomalous (the paper's OOD score is -E(v))"

    def __init__(self, ebm: ImageEnergy, encoder: GaussianEncoder, generator: ImageGenerator, image_shape,
                 *, refine: Langevin, method: str = "bidvl"):
        super().__init__()
        self.ebm, self.encoder, self.generator = ebm, encoder, generator
        self.image_shape = tuple(image_shape)
        self.refine = refine
        self.method = method

    @property
    def nz(self) -> int:
        return self.generator.nz

    def sample(self, n: int, *, steps=None, step_size=None, sampler=None, record_every: int = 0):
        """v = G(h), h ~ N(0, I) (the paper's samples). With ``steps`` K > 0 (``--steps``, or ``refine_steps`` at
        fit time) the images are then moved by K Langevin steps on log pi(v) = -E(v) in image space, in the one
        convention v <- v + s^2/2 grad(-E) + s eps (s = ``--step-size`` or ``refine_step_size``). E is spectrally
        normalised, so its gradient is small: refinement moves images little at small s (the stages clip the
        result to [-1, 1] when they write uint8 images)."""
        if sampler == "sir":
            raise UserError(f"--sampler sir: not available for a {self.method} model (it has no latent-space prior)")
        if record_every:
            raise UserError(f"--trajectory: not available for a {self.method} model "
                            "(its samples are G(h), h ~ N(0, I))")
        dev = next(self.parameters()).device
        ch = self.refine.override(steps, step_size)
        h = torch.randn(n, self.nz, device=dev)  # (n, nz)
        with _eval_mode(self):
            v = torch.cat([self._decode(hb, ch) for hb in h.split(SAMPLE_CHUNK)])  # (n, C, H, W)
        return SampleOutput(v, h)

    def _decode(self, h: torch.Tensor, ch: Langevin) -> torch.Tensor:
        with torch.no_grad():
            v = self.generator(h)
        if ch.steps > 0:
            v = langevin(lambda u: -self.ebm(u), v, ch.steps, ch.effective_step_size(), noise=ch.noise,
                         freeze=[self.ebm], what="image-space Langevin on -E(v)").checked()
        return v

    def log_joint(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """log p(v, h) up to a constant, (B,): -||v - G(h)||^2 - ||h||^2 / 2, the Gaussian decoder N(G(h), I/2) and
        N(0, I) prior whose ELBO is the lower level's VAE term ||G(h_q) - v||^2 + KL(q(h|v) || N(0, I))."""
        return -(v - self.generator(h)).pow(2).flatten(1).sum(1) - 0.5 * h.pow(2).sum(1)

    def reconstruct(self, x: torch.Tensor, *, steps=None, step_size=None,
                    noise=None) -> tuple[torch.Tensor, torch.Tensor]:
        """G(mu(x)): decode the mean of q(h|x) (Sec. 5.2's test reconstructions). With ``steps`` / ``step_size``
        (``--steps``/``--step-size``) h is refined from mu(x) by noise-free Langevin steps on :meth:`log_joint`
        (defaults: POSTERIOR_CHAIN, 20 steps of s = 0.1); ``steps`` 0 is the encoder alone."""
        with _eval_mode(self):
            with torch.no_grad():
                h, _logvar = self.encoder(x)  # (B, nz): the mean of q(h|x)
            if steps is not None or step_size is not None or noise is not None:
                ch = POSTERIOR_CHAIN.override(steps, step_size, noise)
                h = langevin(lambda z: self.log_joint(x, z), h, ch.steps, ch.effective_step_size(), noise=ch.noise,
                             freeze=[self], what="posterior Langevin on log p(x, h)").checked()
            with torch.no_grad():
                return self.generator(h), h

    def score_chain(self, steps=None, step_size=None, noise=None):
        if steps is None and step_size is None and noise is None:
            return {"inference": "encoder mean"}
        ch = POSTERIOR_CHAIN.override(steps, step_size, noise)
        return {"inference": "encoder mean + Langevin on log p(x, h)", **ch.model_dump(),
                "effective_step_size": ch.effective_step_size()}

    def anomaly_score(self, x: torch.Tensor, *, steps=None, step_size=None, noise=None) -> torch.Tensor:
        """E_psi(x), shape (B,): low on the training distribution, so higher = more anomalous (Sec. 5.3 uses -E)."""
        if steps is not None or step_size is not None or noise is not None:
            raise UserError(f"--steps/--step-size/--noise: a {self.method} model's anomaly score is its image "
                            "energy E(x), which runs no chain")
        with _eval_mode(self), torch.no_grad():
            return self.ebm(x)

    def spec(self):
        return {"type": self.type_name, "method": self.method, "image_shape": list(self.image_shape),
                "ebm": self.ebm.spec(), "encoder": self.encoder.spec(), "generator": self.generator.spec(),
                "refine": self.refine.model_dump()}

    @classmethod
    def from_spec(cls, spec):
        ebm, enc = ImageEnergy(**spec["ebm"]), GaussianEncoder(**spec["encoder"])
        gen = ImageGenerator(**spec["generator"])
        shape = check_spec(spec["image_shape"], {})
        parts = {"encoder.nz": (enc.nz, gen.nz), "image_shape width": (shape[2], shape[1])}
        for name, net in (("ebm", ebm), ("encoder", enc), ("generator", gen)):
            parts[f"{name}.channels"], parts[f"{name}.size"] = (net.channels, shape[0]), (net.size, shape[1])
        return cls(ebm, enc, gen, check_spec(shape, parts), refine=Langevin.stored(**spec["refine"]),
                   method=spec.get("method", "bidvl"))
