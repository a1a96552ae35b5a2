"""Stage 2: the Proto-LeakNet model, scorers and training, from a feature store alone."""
