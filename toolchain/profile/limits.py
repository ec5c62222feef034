"""Sane maxima of the measuring options: a run is a few minutes at most, and a typo (``--idle 1e9``,
``--repeats 10000000``) is an error, not a process that never ends. :class:`toolchain.profile.run.ProfileOptions`
checks them and the commands' Click ranges use them; this module imports nothing, so building the CLI
stays light."""

MAX_REPEATS = 1000
MAX_WINDOW_S = 600.0
MIN_WINDOW_S = 0.05
MAX_IDLE_S = 600.0
MAX_WARMUP = 100_000
MAX_PROFILE_RUNS = 10_000
MAX_BATCH = 65_536
MAX_SEQ_LEN = 65_536
MAX_WATTS = 100_000.0  # --watts / --watts-per-core of the estimate meter
