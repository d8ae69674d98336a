"""dsnet.analysis."""
