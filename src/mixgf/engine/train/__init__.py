"""Training loops: pre-training (masked-gene modelling, SimCSE, cross-species) and classifier fine-tuning."""
