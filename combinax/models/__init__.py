"""combinax.models: models built only from `combinax.layers` layers and combinators."""
