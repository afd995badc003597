"""Neural building blocks shared by plugin families (activations, radial bases, cutoffs, scatter).

Plugins import these; nothing here imports a plugin.
"""
