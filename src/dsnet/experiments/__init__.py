"""dsnet.experiments."""
