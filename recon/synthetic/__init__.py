"""Ground truth for the method: a procedural face-like family, a generator that renders it, SIDE/MAD.

See :mod:`recon.synthetic.family` (objects and rendering), :mod:`.generator`
(the StyleGAN2-shaped instrument), :mod:`.metrics` (the reference metrics),
:mod:`.bundle` (a deterministic model bundle) and :mod:`.dataset` (samples).
"""
