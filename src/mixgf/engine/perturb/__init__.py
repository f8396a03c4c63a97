"""In silico perturbation: perturbed token copies, their embedding, and the statistics of a screen."""
