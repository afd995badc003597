"""Numbers shared across cdp, defined once (a leaf module: imports nothing).

``NUM_ELEMENTS``: rows of a per-element table indexed by atomic number Z = 0..118 (the one-hot width of
ChargE3Net, DeepDFT's embedding size, the atomic prior's coefficient rows); ``MAX_Z`` the largest Z a
model accepts.  ``DEFAULT_PROBE_BATCH``: probes per decoder call when neither a batch size nor a memory
budget is given.
"""

NUM_ELEMENTS = 119
MAX_Z = NUM_ELEMENTS - 1
DEFAULT_PROBE_BATCH = 2500
