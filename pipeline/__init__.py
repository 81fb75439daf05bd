"""genlab: config-driven experiment pipelines for the generative models of DLwP ch. 8."""
