"""mmq's configuration: :class:`QuantConfig` (bits, quantizer per activation role,
calibration options) and the options of the APHQ stages. Quantizers and calibrators are built
from it through the ``QUANTIZERS`` / ``CALIBRATORS`` registries."""
from .aphq_options import MROptions, ReconstructOptions
from .quant_config import ROLES, QuantConfig

__all__ = ['QuantConfig', 'MROptions', 'ReconstructOptions', 'ROLES']
