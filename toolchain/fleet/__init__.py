"""Profiling where the hardware is: (model, target) jobs on the nodes of a Ray cluster.

A node offers targets as Ray custom resources (:mod:`~toolchain.fleet.resources`: ``toolchain-target:NAME``,
one unit each, so a node measures one job of a target at a time); ``toolchain worker`` starts such a node
(:mod:`~toolchain.fleet.worker` builds its ``ray start`` line). The driver (:mod:`~toolchain.fleet.dispatch`)
ships each ONNX file through Ray's object store, runs one job per target on a node that offers it
(:mod:`~toolchain.fleet.node`: the node's own onnxruntime build, meter and cost table), retries a job once on
another node when its node is lost, and brings the cost tables back with the node's provenance.
:mod:`~toolchain.fleet.local` starts and stops a whole cluster on this machine (tests, ``make fleet-demo``).

Nothing here imports torch: a profiling node needs only onnxruntime (any build), onnx and Ray.
"""
