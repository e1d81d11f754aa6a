"""Training LR students from HR teachers: data, synthesis, models, distillation losses, training loop."""
