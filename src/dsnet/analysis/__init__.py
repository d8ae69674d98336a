"""dsnet.analysis: what a trained model learned (`dsnet analyze`). Each analysis writes a PNG and a CSV.

- `analyze_attention`: attention weights per robust module, mean ± std over runs (the paper's Fig. 8).
- `analyze_landscape`: loss surface along two filter-normalised random directions (Fig. 7a; Li et al. 2018).
- `analyze_gradient_variance`: variance of the last layer's gradient across batches (Fig. 7b).
- `analyze_lipschitz`: local Lipschitz estimates of every atomic block and module (Lemma 3.2).
"""

from __future__ import annotations

from dsnet.lazy import lazy_exports

_EXPORTS = {
    "analyze_attention": "attention",
    "read_attention": "attention",
    "AnalysisResult": "attention",
    "analyze_landscape": "landscape",
    "loss_landscape": "landscape",
    "filter_normalized_direction": "landscape",
    "analyze_gradient_variance": "gradient_variance",
    "gradient_variance": "gradient_variance",
    "analyze_lipschitz": "lipschitz",
    "jacobian_spectral_norm": "lipschitz",
    "load_model": "common",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
