"""Networks only (no training logic): generators, energy/ratio MLPs, encoders, image EBMs."""

from ebmtool.nets.generators import GENERATORS, Generator, build_generator, resolve_arch
from ebmtool.nets.mlp import EnergyMLP, xavier_init

__all__ = ["GENERATORS", "Generator", "build_generator", "resolve_arch", "EnergyMLP", "xavier_init"]
