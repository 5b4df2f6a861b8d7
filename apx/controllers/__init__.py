"""APX controllers: the pure core (models, translator, IR, renderers) and the appliers (I/O)."""
