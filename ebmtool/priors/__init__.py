"""Every latent prior, one file each, behind one interface (:class:`Prior`) and one registry (:data:`PRIORS`)."""

from ebmtool.priors.base import PRIORS, GaussianPrior, Prior, prior_from_spec, register_prior
from ebmtool.priors.energy import EnergyTiltedPrior
from ebmtool.priors.joint import JointPrior
from ebmtool.priors.ratio_product import RatioProductPrior

__all__ = ["PRIORS", "Prior", "GaussianPrior", "EnergyTiltedPrior", "RatioProductPrior", "JointPrior",
           "prior_from_spec", "register_prior"]
