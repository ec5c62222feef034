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

Importing the package imports nothing: matplotlib is imported only when a figure is drawn.
"""
