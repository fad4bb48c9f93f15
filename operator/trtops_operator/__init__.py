"""trtops operator: reconciles ``TrtEngine`` resources (API group ``trtops.dev``)."""

__version__ = "0.1.0"
GROUP = "trtops.dev"
VERSION = "v1alpha1"
PLURAL = "trtengines"
KIND = "TrtEngine"
