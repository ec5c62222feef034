"""Layer 1: samples for a model. :mod:`~toolchain.data.dataset` (the :class:`Dataset` and the options),
:mod:`~toolchain.data.readers` (npz, image folders, text, built-in sets, synthetic inputs) and
:mod:`~toolchain.data.load` (a data spec string -> a Dataset checked against the model's inputs).
Never imports the model layer: a PyTorch model's inputs reach it as :class:`~toolchain.core.onnxfile.ModelInput`."""
