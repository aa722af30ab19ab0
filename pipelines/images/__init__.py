"""Images: ``decode`` (the one decoder training and serving share, ``ImageSet``, splits),
``pixels`` (the input contract a model expects), ``names`` (class names). TF-free."""
