"""Reports of what the toolchain measured, in the order a run flows through them:

- :mod:`~toolchain.report.inputs`: the pipeline's ``run`` dict as a typed view
- :mod:`~toolchain.report.metrics`: the derived metrics (reductions, compression, ARP/EPR/LSI/MSE/CFA, Green Score,
  Pareto front) and their definitions
- :mod:`~toolchain.report.layers`: the per-layer section (before/after cost tables, where the energy went)
- :mod:`~toolchain.report.build`: :func:`~toolchain.report.build.build_report`, the report as JSON-able data
- :mod:`~toolchain.report.figures`: its PNGs; :mod:`~toolchain.report.documents`: its Markdown and HTML, and
  :func:`~toolchain.report.documents.write_report`
- :mod:`~toolchain.report.charts`: the charts and pages of `toolchain profile` and `toolchain compare`
- :mod:`~toolchain.report.render`: the one formatting and Markdown/HTML rendering path they share
- :mod:`~toolchain.report.doctor`: what this machine can run and measure (`toolchain doctor`)

The package exports what the pipeline calls (:func:`build_report`, :func:`write_report`,
:func:`pareto_front`); importing it is light: matplotlib is imported only when a figure is drawn.
"""

from toolchain.report.build import build_report
from toolchain.report.documents import write_report
from toolchain.report.metrics import pareto_front

__all__ = ["build_report", "pareto_front", "write_report"]
