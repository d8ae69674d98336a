"""dsnet.training."""
