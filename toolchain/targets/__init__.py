"""Layer 3: deployment targets. :mod:`~toolchain.targets.target` (the TOML files and their validation),
:mod:`~toolchain.targets.presets` (INT8 quantization presets as plain dataclasses) and
:mod:`~toolchain.targets.host` (is a target usable here, its meters, the default target)."""
