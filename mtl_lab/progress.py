"""The progress-bar class of the lab: tqdm's notebook widgets where they can be drawn, text bars
everywhere else.

``tqdm.auto`` picks widgets as soon as it runs inside a Jupyter kernel, and when ipywidgets is
missing it warns (``TqdmWarning: IProgress not found``) and then writes one output per update: a
notebook executed headless (nbmake, nbclient) gathered 351 outputs in one cell. Widgets are used
here only when a kernel is running *and* ipywidgets is installed. The libraries the lab loads
(datasets, huggingface_hub) import ``tqdm.auto`` themselves; its warning is silenced here (this
module is imported first by ``import mtl_lab``), since the lab's own bars fall back to text.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings

warnings.filterwarnings("ignore", message=r"IProgress not found")


def _bar_class():
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm as widget_bars

        return widget_bars
    from tqdm.std import tqdm as text_bars

    return text_bars


tqdm = _bar_class()
