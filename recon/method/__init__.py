"""The per-image GAN2Shape method: settings and presets, the networks it trains, the prior, losses,
pseudo-sample sampling, the latent projection, the frozen GAN and the context the engine runs on,
the optimisation engine for K instances, joint pre-training, inversion, and the :class:`~recon.method.reconstructor.Reconstructor` facade.

docs/method.md maps each step of the method to the function here that implements it.
"""
