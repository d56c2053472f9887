"""Figures for interpretability research, offline: every function returns a figure that shows
itself in Jupyter / VS Code / Colab and saves as one self-contained HTML file (`fig.save("x.html")`:
all JS and CSS inline, nothing loaded from the network), as SVG where the figure is static, and as
PNG through a headless Chromium.

The functions take tensors and labels; the `*_from_cache` ones take an ActivationCache and use its
public methods. See docs/viz.md.

Example:
    >>> from lmscope import viz
    >>> viz.heatmap(torch.randn(4, 6), xlabel="position", ylabel="layer").save("grid.html")
"""

from lmscope.errors import BrowserNotFoundError, FigureTooLargeError
from lmscope.viz._figure import Figure, page
from lmscope.viz.attention import attention_from_cache, attention_heads, attention_patterns
from lmscope.viz.bars import bars
from lmscope.viz.dla import dla_from_cache, dla_heads, top_neurons
from lmscope.viz.heatmap import heatmap
from lmscope.viz.lines import line
from lmscope.viz.logit_lens import logit_lens, logit_lens_from_cache
from lmscope.viz.patching import patching_heatmap
from lmscope.viz.scatter import scatter
from lmscope.viz.table import prompt_table, prompt_table_from_model
from lmscope.viz.tokens import colored_tokens

__all__ = [
    "BrowserNotFoundError",
    "Figure",
    "FigureTooLargeError",
    "attention_from_cache",
    "attention_heads",
    "attention_patterns",
    "bars",
    "colored_tokens",
    "dla_from_cache",
    "dla_heads",
    "heatmap",
    "line",
    "logit_lens",
    "logit_lens_from_cache",
    "page",
    "patching_heatmap",
    "prompt_table",
    "prompt_table_from_model",
    "scatter",
    "top_neurons",
]
