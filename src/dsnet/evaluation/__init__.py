"""dsnet.evaluation."""
