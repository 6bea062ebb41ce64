"""Every attack, and the adaptive view of a defense (BPDA, EOT, reparameterization)."""
