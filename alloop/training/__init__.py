"""Training a run's model from its config: the bridge between RunConfig and the pure core (fit,
choose_s, classmap)."""
