"""GALIP (Generative Adversarial CLIPs, Tao et al., CVPR 2023) as a Studio generator plugin."""
